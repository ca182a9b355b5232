//! The API description against the real binary: /openapi.json is this
//! repository's openapi.json, /docs renders it, both revalidate with their
//! ETag; and (with schemathesis installed by scripts/schemathesis) every
//! operation the binary serves conforms to it.

mod support;

use std::process::Command;

use support::{DataDir, Fibd};

fn repo_document() -> serde_json::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .expect("openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

#[test]
fn the_served_description_is_the_repository_s_and_revalidates() {
    let data = DataDir::new("contract-openapi");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();

    let r = client.request("GET", "/openapi.json", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("Cache-Control"), Some("no-cache"));
    let served: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(served, repo_document());
    assert_eq!(served["openapi"], "3.1.0");
    let tag = r.header("ETag").expect("an ETag").to_owned();
    assert!(
        tag.starts_with('"') && !tag.starts_with("W/"),
        "strong: {tag}"
    );

    for header in [tag.clone(), format!("W/{tag}"), format!("\"other\", {tag}")] {
        let r = client.request("GET", "/openapi.json", &[("If-None-Match", &header)]);
        assert_eq!(r.status, 304, "{header}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("ETag"), Some(tag.as_str()));
    }
    let r = client.request("GET", "/openapi.json", &[("If-None-Match", "\"stale\"")]);
    assert_eq!(r.status, 200);

    let head = client.request("HEAD", "/openapi.json", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("Content-Length"),
        Some(served.to_string().len().to_string().as_str())
    );
}

#[test]
fn docs_render_every_operation_without_anything_external() {
    let data = DataDir::new("contract-docs");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();

    let r = client.request("GET", "/docs", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let html = r.text();
    assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("src="));
    let doc = repo_document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
            let curl = op["x-curl"].as_str().unwrap();
            assert!(html.contains(&escape(curl)), "{method} {path}: {curl}");
        }
    }
    let tag = r.header("ETag").expect("an ETag").to_owned();
    let again = client.request("GET", "/docs", &[("If-None-Match", &tag)]);
    assert_eq!(again.status, 304);
    // /docs and /openapi.json are told apart by their tags.
    let other = client.request("GET", "/openapi.json", &[("If-None-Match", &tag)]);
    assert_eq!(other.status, 200);
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[test]
#[ignore = "needs schemathesis: run scripts/test"]
fn schemathesis_finds_nothing() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/schemathesis");
    let status = Command::new(script)
        .env("FIBD_BIN", support::binary())
        .status()
        .expect("scripts/schemathesis runs");
    assert!(status.success(), "schemathesis found failures (above)");
}
