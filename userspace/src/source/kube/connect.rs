//! Connecting to the Kubernetes API server: credentials from `--kubeconfig`,
//! `KUBECONFIG`, `~/.kube/config` or the pod's service account, and errors
//! that say which of those was tried and what to do.

use std::path::PathBuf;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where the credentials come from.
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    /// `--kubeconfig`: this file and nothing else. `None`: `KUBECONFIG`,
    /// then `~/.kube/config`, then the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
}

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing to connect with.
    #[error(
        "no Kubernetes credentials: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, \
         or run in a pod with a service account ({0})"
    )]
    NoCredentials(String),
    /// `--kubeconfig` names a file that cannot be used.
    #[error("--kubeconfig {path}: {reason}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The configuration was read but no client could be made from it
    /// (for example a bad certificate).
    #[error("creating the Kubernetes client for {server}: {reason}")]
    Client {
        /// The API server URL.
        server: String,
        /// Why.
        reason: String,
    },
}

/// A client for the API server `options` point to. Does not contact it:
/// an unreachable API server is not an error here (the watchers retry).
pub async fn connect(options: &KubeOptions) -> Result<Client, ConnectError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| ConnectError::Kubeconfig {
                path: path.clone(),
                reason: error_chain(&e),
            })?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| ConnectError::Kubeconfig {
                    path: path.clone(),
                    reason: error_chain(&e),
                })?
        }
        None => Config::infer()
            .await
            .map_err(|e| ConnectError::NoCredentials(error_chain(&e)))?,
    };
    let server = config.cluster_url.to_string();
    Client::try_from(config).map_err(|e| ConnectError::Client {
        server,
        reason: error_chain(&e),
    })
}

/// What a failed API request means for the operator: the API server's own
/// message for refusals (a 403 names the user, verb and resource), the
/// cause for transport errors.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => match status.code {
            401 => format!(
                "unauthorized (401): the API server rejected the credentials: {}",
                status.message
            ),
            403 => format!("forbidden (403): {}", status.message),
            code => format!(
                "the API server answered {code} ({}): {}",
                status.reason, status.message
            ),
        },
        other => format!("cannot reach the API server: {}", error_chain(other)),
    }
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors repeat their cause in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
