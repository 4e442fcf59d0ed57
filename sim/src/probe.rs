//! Parsing `gp-probe`'s JSON lines, and building its command line.

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, Result};
use serde::Deserialize;

/// One attempt reported by `gp-probe tcp|udp|hold` (one JSON line).
///
/// Servers (`gp-probe serve`) answer `pod=NAME client=IP:PORT` (TCP line mode
/// adds ` line=<the line>`), which ends up in `reply`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ProbeResult {
    /// The attempt succeeded (connected / got a reply).
    pub ok: bool,
    /// Address the socket was connected to (getpeername), TCP and connected UDP.
    #[serde(default)]
    pub peer: Option<String>,
    /// Local address of the probe's socket (getsockname).
    #[serde(default)]
    pub local: Option<String>,
    /// Source address of the UDP reply (recvfrom).
    #[serde(default)]
    pub from: Option<String>,
    /// The server's answer (HTTP body or reply line), trimmed.
    #[serde(default)]
    pub reply: Option<String>,
    /// HTTP status code of the answer (`tcp` mode), when it was HTTP.
    #[serde(default)]
    pub status: Option<u16>,
    /// errno of the failure, if the OS gave one (111 = ECONNREFUSED, 101 = ENETUNREACH...).
    #[serde(default)]
    pub errno: Option<i32>,
    /// Error text; exactly "timeout" when the attempt timed out.
    #[serde(default)]
    pub error: Option<String>,
    /// Which step failed: "socket", "connect", "send", "recv"...
    #[serde(default)]
    pub stage: Option<String>,
}

impl ProbeResult {
    /// Value of `key=` in the reply (`pod`, `client`, `line`); `line` is the
    /// rest of the reply and may contain spaces.
    pub fn field(&self, key: &str) -> Option<&str> {
        let reply = self.reply.as_deref()?;
        // "line=" comes last and is free text: split it off first so a line
        // containing "pod=x" can't be mistaken for a field.
        let (head, line) = match reply.find(" line=") {
            Some(i) => (&reply[..i], Some(&reply[i + " line=".len()..])),
            None => match reply.strip_prefix("line=") {
                Some(rest) => ("", Some(rest)),
                None => (reply, None),
            },
        };
        if key == "line" {
            return line;
        }
        head.split_whitespace()
            .find_map(|tok| tok.strip_prefix(key)?.strip_prefix('='))
    }

    /// The answering pod's name (`pod=` in the reply).
    pub fn pod(&self) -> Option<&str> {
        self.field("pod")
    }

    /// The client address the server saw, "ip:port" (`client=` in the reply).
    pub fn client(&self) -> Option<&str> {
        self.field("client")
    }

    /// [`ProbeResult::client`] parsed.
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client()?.parse().ok()
    }

    /// `peer` parsed.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer.as_deref()?.parse().ok()
    }

    /// `from` parsed.
    pub fn from_addr(&self) -> Option<SocketAddr> {
        self.from.as_deref()?.parse().ok()
    }
}

/// Parses gp-probe output: one JSON object per non-empty line.
pub fn parse_lines(stdout: &str) -> Result<Vec<ProbeResult>> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).with_context(|| format!("bad gp-probe output line: {l:?}"))
        })
        .collect()
}

/// A `Command` for the gp-probe binary next to the running test binary.
///
/// Fails if it hasn't been built (`cargo test -p gangplank-tests` and
/// `cargo build --workspace` both build it).
pub fn probe_cmd() -> Result<Command> {
    Ok(Command::new(crate::target_binary("gp-probe")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let r = parse_lines(
            "{\"ok\":true,\"peer\":\"198.19.2.10:80\",\"reply\":\"pod=pod-b1 client=198.19.1.10:40000 line=a pod=x\"}\n\
             {\"ok\":false,\"errno\":111,\"error\":\"Connection refused (os error 111)\",\"stage\":\"connect\"}\n",
        )
        .expect("valid");
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].pod(), Some("pod-b1"));
        assert_eq!(r[0].client(), Some("198.19.1.10:40000"));
        assert_eq!(r[0].field("line"), Some("a pod=x"));
        assert_eq!(r[0].client_addr().map(|a| a.port()), Some(40000));
        assert!(!r[1].ok);
        assert_eq!(r[1].errno, Some(111));
        assert_eq!(r[1].pod(), None);
    }
}
