//! Builds the API description into the binary: `openapi.json` (the contract,
//! at the repository root) re-serialized compactly for GET /openapi.json,
//! the /docs page rendered from it, and a strong ETag for each, derived from
//! the served bytes. Rendering here keeps serde_json and the HTML writer out
//! of the binary and off the event loop.

use std::fmt::Write as _;
use std::hash::Hasher;
use std::path::Path;

use serde_json::{Map, Value};
use siphasher::sip128::{Hasher128, SipHasher24};

fn main() {
    println!("cargo::rerun-if-changed=openapi.json");
    println!("cargo::rerun-if-changed=build.rs");
    let text = std::fs::read_to_string("openapi.json").expect("openapi.json at the crate root");
    let doc: Value = serde_json::from_str(&text).expect("openapi.json is JSON");
    let compact = serde_json::to_vec(&doc).expect("a JSON value serializes");
    let html = render_docs(&doc);
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out);
    write(out, "openapi.json", &compact);
    write(out, "openapi.etag", etag(&compact).as_bytes());
    write(out, "docs.html", html.as_bytes());
    write(out, "docs.etag", etag(html.as_bytes()).as_bytes());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("OUT_DIR is writable");
}

/// `"<32 hex digits>"`: SipHash-2-4-128 of the bytes under a fixed key, so
/// the same document always has the same tag, whatever the toolchain.
fn etag(bytes: &[u8]) -> String {
    let mut hasher = SipHasher24::new_with_keys(0x6669_6264, 0x006f_7065_6e61_7069);
    hasher.write(bytes);
    format!("\"{:032x}\"", hasher.finish128().as_u128())
}

const METHODS: [&str; 5] = ["get", "head", "post", "put", "delete"];

/// One self-contained page: inline CSS, no script, no external asset.
fn render_docs(doc: &Value) -> String {
    let info = &doc["info"];
    let title = str_of(&info["title"]);
    let mut h = String::with_capacity(64 * 1024);
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} API reference</title><style>{CSS}</style></head><body>\
         <h1>{t} {v} <small>API reference</small></h1>{d}\
         <p>The machine-readable description: <a href=\"/openapi.json\">/openapi.json</a> (OpenAPI {o}).</p>",
        t = esc(title),
        v = esc(str_of(&info["version"])),
        d = paragraphs(str_of(&info["description"])),
        o = esc(str_of(&doc["openapi"])),
    );
    let operations = operations(doc);
    h.push_str("<nav><h2>Operations</h2><ul>");
    for (path, method, op) in &operations {
        let _ = write!(
            h,
            "<li><a href=\"#{id}\"><code>{m} {p}</code></a> {s}</li>",
            id = esc(str_of(&op["operationId"])),
            m = method.to_uppercase(),
            p = esc(path),
            s = esc(str_of(&op["summary"])),
        );
    }
    h.push_str("</ul></nav>");
    for (path, method, op) in &operations {
        render_operation(&mut h, doc, path, method, op);
    }
    render_schemas(&mut h, doc);
    h.push_str("</body></html>\n");
    h
}

/// Every operation, grouped by tag in the document's tag order, then by
/// path and method (serde_json's maps are sorted, so the file's own order
/// is not kept).
fn operations(doc: &Value) -> Vec<(&str, &str, &Value)> {
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| str_of(&t["name"]))
        .collect();
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (rank, method) in METHODS.iter().enumerate() {
            if let Some(op) = item.get(*method) {
                let tag = str_of(&op["tags"][0]);
                let group = tags.iter().position(|t| *t == tag).unwrap_or(tags.len());
                all.push(((group, path.as_str(), rank), (path.as_str(), *method, op)));
            }
        }
    }
    all.sort_by_key(|(key, _)| *key);
    all.into_iter().map(|(_, op)| op).collect()
}

fn render_operation(h: &mut String, doc: &Value, path: &str, method: &str, op: &Value) {
    let _ = write!(
        h,
        "<section id=\"{id}\"><h2><span class=\"m {ml}\">{m}</span> <code>{p}</code></h2>\
         <p><b>{s}</b></p>{d}",
        id = esc(str_of(&op["operationId"])),
        ml = method,
        m = method.to_uppercase(),
        p = esc(path),
        s = esc(str_of(&op["summary"])),
        d = paragraphs(str_of(&op["description"])),
    );
    if let Some(curl) = op["x-curl"].as_str() {
        let _ = write!(h, "<pre>$ {}</pre>", esc(curl));
    }
    let params: Vec<&Value> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| resolve(doc, p))
        .collect();
    if !params.is_empty() {
        h.push_str(
            "<h3>Parameters</h3><table><tr><th>name</th><th>in</th><th>required</th>\
             <th>schema</th><th>description</th></tr>",
        );
        for p in params {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(str_of(&p["name"])),
                esc(str_of(&p["in"])),
                if p["required"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                esc(&schema_text(&p["schema"])),
                esc(str_of(&p["description"])),
            );
        }
        h.push_str("</table>");
    }
    if let Some(body) = op.get("requestBody") {
        h.push_str("<h3>Request body</h3><ul>");
        for (ctype, media) in body["content"].as_object().into_iter().flatten() {
            let _ = write!(
                h,
                "<li><code>{}</code>: <code>{}</code></li>",
                esc(ctype),
                esc(&schema_text(&media["schema"]))
            );
        }
        h.push_str("</ul>");
    }
    h.push_str(
        "<h3>Responses</h3><table><tr><th>status</th><th>description</th>\
         <th>content</th><th>headers</th></tr>",
    );
    for (status, response) in op["responses"].as_object().into_iter().flatten() {
        let response = resolve(doc, response);
        let content: Vec<String> = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(ctype, media)| format!("{ctype}: {}", schema_text(&media["schema"])))
            .collect();
        let headers: Vec<&str> = response["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, _)| name.as_str())
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
            esc(status),
            esc(str_of(&response["description"])),
            esc(&content.join("; ")),
            esc(&headers.join(", ")),
        );
    }
    h.push_str("</table></section>");
}

/// Every named schema once, with its fields (`?` when optional).
fn render_schemas(h: &mut String, doc: &Value) {
    h.push_str("<section id=\"schemas\"><h2>Schemas</h2><table><tr><th>name</th><th>schema</th><th>description</th></tr>");
    for (name, schema) in doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let _ = write!(
            h,
            "<tr><td id=\"schema-{n}\"><code>{n}</code></td><td><code>{s}</code></td><td>{d}</td></tr>",
            n = esc(name),
            s = esc(&schema_text(schema)),
            d = esc(str_of(&schema["description"])),
        );
    }
    h.push_str("</table></section>");
}

/// A `$ref` to a component, followed; anything else as it is.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str() {
        Some(reference) => reference
            .trim_start_matches("#/")
            .split('/')
            .fold(doc, |node, key| &node[key]),
        None => value,
    }
}

/// A one-line summary of a schema: its component name, or its type and bounds.
fn schema_text(schema: &Value) -> String {
    if let Some(reference) = schema["$ref"].as_str() {
        // Named schemas are spelled out once, under Schemas.
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return name.to_string();
    }
    let Some(object) = schema.as_object() else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(t) = object.get("type").and_then(Value::as_str) {
        parts.push(t.to_string());
    }
    for key in [
        "minimum",
        "maximum",
        "minLength",
        "pattern",
        "const",
        "enum",
    ] {
        if let Some(v) = object.get(key) {
            parts.push(format!("{key} {v}"));
        }
    }
    if let Some(props) = object.get("properties").and_then(Value::as_object) {
        parts.push(format!("{{{}}}", fields(props, object)));
    }
    parts.join(", ")
}

fn fields(props: &Map<String, Value>, object: &Map<String, Value>) -> String {
    let required: Vec<&str> = object
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    props
        .keys()
        .map(|k| {
            if required.contains(&k.as_str()) {
                k.clone()
            } else {
                format!("{k}?")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .filter(|p| !p.is_empty())
        .map(|p| format!("<p>{}</p>", esc(p)))
        .collect()
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;max-width:60em;margin:1em auto;padding:0 1em;color:#222}\
code,pre{font-family:ui-monospace,monospace;font-size:13px}pre{background:#f4f4f4;padding:.5em;overflow-x:auto}\
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .4em;text-align:left;vertical-align:top}\
section{border-top:2px solid #ccc;margin-top:1.5em}.m{display:inline-block;min-width:3.5em;text-align:center;border-radius:3px;color:#fff;padding:0 .3em}\
.get{background:#2b6cb0}.head{background:#718096}.post{background:#2f855a}small{color:#777;font-weight:normal}";
