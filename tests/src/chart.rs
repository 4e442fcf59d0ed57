//! Renders the Helm chart (`charts/gangplank`) the way `helm template`
//! does, without Helm (none can be installed here): Go's text/template
//! language (the `gtmpl` crate) with the Helm objects the chart uses
//! (`.Values`, `.Release`, `.Chart`) and the few Sprig functions its
//! templates call: `default`, `quote`, `toYaml`, `indent`, `nindent`,
//! `join`, `int`, `add`.
//!
//! A template that names a value that does not exist renders Go's
//! `<no value>`; that is an error here, so a misspelt value cannot pass.
//! `helm lint` and `helm template` still belong to a release check on a
//! machine with Helm.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use gtmpl::{Context as TemplateContext, FuncError, Template, Value};
use gtmpl_value::Number;
use serde_json::Value as Json;

/// The chart's directory in this repository.
pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/gangplank")
}

/// One rendered template file.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `templates/<file>`.
    pub template: String,
    /// Its text.
    pub text: String,
    /// Its YAML documents (empty ones left out).
    pub objects: Vec<Json>,
}

/// `helm template <release> charts/gangplank --namespace <ns> -f <values>`:
/// every template, with `overrides` merged over values.yaml as `-f` does.
pub fn render(release: &str, namespace: &str, overrides: &Json) -> Result<Vec<Rendered>> {
    let dir = chart_dir();
    let chart: Json = read_yaml(&dir.join("Chart.yaml"))?;
    let mut values: Json = read_yaml(&dir.join("values.yaml"))?;
    merge(&mut values, overrides);
    let context = serde_json::json!({
        "Values": values,
        "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                    "IsInstall": true, "IsUpgrade": false},
        "Chart": {"Name": chart["name"], "Version": chart["version"],
                  "AppVersion": chart["appVersion"]},
    });
    let context = TemplateContext::from(to_template_value(&context));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let name = format!(
            "templates/{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        let source = std::fs::read_to_string(&file).with_context(|| format!("reading {name}"))?;
        let text = render_text(&name, &source, &context)?;
        let objects = if name.ends_with(".yaml") {
            split_documents(&text)
                .with_context(|| format!("{name} renders invalid YAML:\n{text}"))?
        } else {
            Vec::new()
        };
        out.push(Rendered {
            template: name,
            text,
            objects,
        });
    }
    Ok(out)
}

/// Every object of a rendering, in template order.
pub fn objects(rendered: &[Rendered]) -> Vec<Json> {
    rendered.iter().flat_map(|r| r.objects.clone()).collect()
}

fn render_text(name: &str, source: &str, context: &TemplateContext) -> Result<String> {
    let mut template = Template::default();
    template.add_funcs(&[
        ("default", default as gtmpl::Func),
        ("quote", quote as gtmpl::Func),
        ("toYaml", to_yaml as gtmpl::Func),
        ("indent", indent as gtmpl::Func),
        ("nindent", nindent as gtmpl::Func),
        ("join", join as gtmpl::Func),
        ("int", int as gtmpl::Func),
        ("add", add as gtmpl::Func),
    ]);
    template
        .parse(source)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    let text = template
        .render(context)
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    if let Some(line) = text.lines().find(|l| l.contains("<no value>")) {
        bail!("{name}: a value the template names does not exist: {line:?}");
    }
    Ok(text)
}

fn split_documents(text: &str) -> Result<Vec<Json>> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: Json = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn read_yaml(path: &Path) -> Result<Json> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Helm's merge of `-f` values: maps merge key by key, `null` removes a
/// key, anything else replaces.
pub fn merge(base: &mut Json, over: &Json) {
    match (base, over) {
        (Json::Object(b), Json::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Json::Null), v);
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn to_template_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => Value::Number(if let Some(i) = n.as_i64() {
            Number::from(i)
        } else if let Some(u) = n.as_u64() {
            Number::from(u)
        } else {
            Number::from(n.as_f64().unwrap_or(0.0))
        }),
        Json::String(s) => Value::String(s.clone()),
        Json::Array(a) => Value::Array(a.iter().map(to_template_value).collect()),
        Json::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), to_template_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn to_json(v: &Value) -> Result<Json, FuncError> {
    Ok(match v {
        Value::NoValue | Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                Json::from(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::Array(a) => Json::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        Value::Object(o) | Value::Map(o) => Json::Object(
            o.iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<_, FuncError>>()?,
        ),
        Value::Function(_) => return Err(FuncError::Generic("a function has no YAML".into())),
    })
}

fn exactly<'a>(name: &str, args: &'a [Value], n: usize) -> Result<&'a [Value], FuncError> {
    if args.len() == n {
        Ok(args)
    } else {
        Err(FuncError::ExactlyXArgs(name.into(), n))
    }
}

/// Sprig's emptiness: nil, false, 0, "" and empty lists and maps.
fn is_empty(v: &Value) -> bool {
    match v {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) | Value::Map(o) => o.is_empty(),
        Value::Function(_) => false,
    }
}

/// `default D V`: V unless it is empty, then D.
fn default(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [d] => Ok(d.clone()),
        [d, v] => Ok(if is_empty(v) { d.clone() } else { v.clone() }),
        _ => Err(FuncError::AtLeastXArgs("default".into(), 1)),
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::NoValue | Value::Nil => String::new(),
        other => other.to_string(),
    }
}

/// `quote V...`: each argument as a double-quoted string, space separated.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let quoted: Vec<String> = args
        .iter()
        .filter(|v| !matches!(v, Value::Nil | Value::NoValue))
        .map(|v| serde_json::to_string(&as_text(v)).unwrap_or_default())
        .collect();
    Ok(Value::String(quoted.join(" ")))
}

/// `toYaml V`: V as YAML, without the final newline (as Helm's).
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly("toYaml", args, 1)? else {
        unreachable!()
    };
    let yaml = serde_yaml::to_string(&to_json(v)?)
        .map_err(|e| FuncError::Generic(format!("toYaml: {e}")))?;
    Ok(Value::String(yaml.trim_end_matches('\n').to_string()))
}

fn count(name: &str, v: &Value) -> Result<usize, FuncError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().map(|f| f as u64))
            .map(|n| n as usize)
            .ok_or_else(|| FuncError::Generic(format!("{name}: not a count: {n:?}"))),
        other => Err(FuncError::Generic(format!("{name}: not a number: {other}"))),
    }
}

fn indent_by(n: usize, text: &str) -> String {
    let pad = " ".repeat(n);
    text.split('\n')
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `indent N S`: every line of S indented by N spaces.
fn indent(args: &[Value]) -> Result<Value, FuncError> {
    let [n, s] = exactly("indent", args, 2)? else {
        unreachable!()
    };
    Ok(Value::String(indent_by(count("indent", n)?, &as_text(s))))
}

/// `nindent N S`: a newline, then `indent N S`.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    let [n, s] = exactly("nindent", args, 2)? else {
        unreachable!()
    };
    Ok(Value::String(format!(
        "\n{}",
        indent_by(count("nindent", n)?, &as_text(s))
    )))
}

/// `join SEP LIST`.
fn join(args: &[Value]) -> Result<Value, FuncError> {
    let [sep, list] = exactly("join", args, 2)? else {
        unreachable!()
    };
    let items = match list {
        Value::Array(a) => a.iter().map(as_text).collect::<Vec<_>>(),
        other => vec![as_text(other)],
    };
    Ok(Value::String(items.join(&as_text(sep))))
}

fn to_i64(name: &str, v: &Value) -> Result<i64, FuncError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| FuncError::Generic(format!("{name}: {n:?}"))),
        Value::String(s) => s
            .parse()
            .map_err(|_| FuncError::Generic(format!("{name}: not an integer: {s:?}"))),
        Value::Bool(b) => Ok(i64::from(*b)),
        Value::NoValue | Value::Nil => Ok(0),
        other => Err(FuncError::Generic(format!("{name}: not a number: {other}"))),
    }
}

/// `int V`.
fn int(args: &[Value]) -> Result<Value, FuncError> {
    let [v] = exactly("int", args, 1)? else {
        unreachable!()
    };
    Ok(Value::Number(Number::from(to_i64("int", v)?)))
}

/// `add A B...`: the integer sum.
fn add(args: &[Value]) -> Result<Value, FuncError> {
    let sum = args
        .iter()
        .map(|v| to_i64("add", v))
        .sum::<Result<i64, _>>()?;
    Ok(Value::Number(Number::from(sum)))
}

/// The strings of a YAML list (none for anything else).
pub fn strings(v: &Json) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The RBAC rules the chart (default values) grants `service_account`
/// (`<release>-agent`, `<release>-ingress`), as the fake API server
/// enforces them: every (Cluster)RoleBinding naming it, with its role's
/// rules (a Role's only in its namespace).
pub fn rbac_rules(
    release: &str,
    namespace: &str,
    service_account: &str,
) -> Result<Vec<crate::fake_api::PolicyRule>> {
    let objects = objects(&render(release, namespace, &serde_json::json!({}))?);
    let mut rules = Vec::new();
    for binding in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == service_account
                    && s["namespace"] == namespace
            });
        if !bound {
            continue;
        }
        let role_kind = &binding["roleRef"]["kind"];
        let role_name = &binding["roleRef"]["name"];
        let role = objects
            .iter()
            .find(|o| &o["kind"] == role_kind && &o["metadata"]["name"] == role_name)
            .with_context(|| format!("{role_kind} {role_name} is bound but not rendered"))?;
        // A RoleBinding grants in its own namespace only.
        let scope = (binding["kind"] == "RoleBinding")
            .then(|| binding["metadata"]["namespace"].as_str().map(String::from))
            .flatten();
        for rule in role["rules"].as_array().into_iter().flatten() {
            rules.push(crate::fake_api::PolicyRule {
                api_groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                resource_names: strings(&rule["resourceNames"]),
                namespace: scope.clone(),
            });
        }
    }
    if rules.is_empty() {
        bail!("the chart grants {namespace}/{service_account} nothing");
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(source: &str, data: Json) -> String {
        render_text(
            "t",
            source,
            &TemplateContext::from(to_template_value(&data)),
        )
        .expect("render")
    }

    /// The functions behave as Sprig's on the chart's uses.
    #[test]
    fn sprig_functions() {
        let data = serde_json::json!({"tag": "", "app": "0.1.0", "n": 30, "list": ["a", "b"],
                                      "map": {"k": "v", "n": {"x": 1}}, "s": "say \"hi\""});
        assert_eq!(run(r#"{{ .tag | default .app }}"#, data.clone()), "0.1.0");
        assert_eq!(run(r#"{{ "x" | default .app }}"#, data.clone()), "x");
        assert_eq!(run(r#"{{ .s | quote }}"#, data.clone()), r#""say \"hi\"""#);
        assert_eq!(run(r#"{{ .n | quote }}"#, data.clone()), r#""30""#);
        assert_eq!(run(r#"{{ add .n 5 }}"#, data.clone()), "35");
        assert_eq!(run(r#"{{ join "," .list }}"#, data.clone()), "a,b");
        assert_eq!(
            run(r#"{{ if gt (int .n) 1 }}yes{{ end }}"#, data.clone()),
            "yes"
        );
        assert_eq!(
            run("x:{{- toYaml .map | nindent 2 }}", data.clone()),
            "x:\n  k: v\n  n:\n    x: 1"
        );
        assert_eq!(
            run("{{ toYaml .list | indent 1 }}", data.clone()),
            " - a\n - b"
        );
        let missing = render_text(
            "t",
            "{{ .nope }}",
            &TemplateContext::from(to_template_value(&data)),
        );
        assert!(missing.is_err(), "a missing value must fail: {missing:?}");
    }

    #[test]
    fn values_merge_as_helm_f_does() {
        let mut base = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": true});
        merge(
            &mut base,
            &serde_json::json!({"a": {"c": [3], "b": null}, "d": false, "e": "x"}),
        );
        assert_eq!(
            base,
            serde_json::json!({"a": {"c": [3]}, "d": false, "e": "x"})
        );
    }
}
