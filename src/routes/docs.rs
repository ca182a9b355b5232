//! The API's own description: GET /openapi.json and GET /docs. build.rs
//! renders both from `openapi.json` at build time and tags each with a
//! strong ETag of its bytes, so serving them queues those bytes where they
//! lie in the binary (or a 304).

use super::late::Shape;
use super::{App, Route};
use crate::http::etag;
use crate::http::parse::Request;
use crate::http::response::{ContentType, Head, Status};
use crate::reply::output::Output;

/// `openapi.json`, compact, as served.
pub(super) const OPENAPI_JSON: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.json"));
const OPENAPI_ETAG: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.etag"));
/// The HTML reference, self-contained (inline CSS, no script).
const DOCS_HTML: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/docs.html"));
const DOCS_ETAG: &str = include_str!(concat!(env!("OUT_DIR"), "/docs.etag"));

impl App {
    /// The document or its HTML rendering; 304 when If-None-Match names it.
    /// Caches may keep either but revalidate, so a new binary is seen at once.
    pub(super) fn api_document(
        &mut self,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
        shape: &Shape,
    ) -> Status {
        let (body, tag, content_type) = match route {
            Route::Docs => (DOCS_HTML, DOCS_ETAG, ContentType::Html),
            _ => (OPENAPI_JSON, OPENAPI_ETAG, ContentType::Json),
        };
        let opaque = tag.trim_matches('"').as_bytes();
        let unchanged = request
            .if_none_match
            .is_some_and(|tags| etag::if_none_match(tags, |t| t == opaque));
        let status = if unchanged {
            Status::NOT_MODIFIED
        } else {
            Status::OK
        };
        let mut head = Head::start(out.buf(), status, &self.date, &shape.request_id);
        if !unchanged {
            head.content_type(content_type);
        }
        head.header("ETag", tag.as_bytes())
            .header("Cache-Control", b"no-cache");
        let length = if unchanged { 0 } else { body.len() };
        head.finish(status, length, shape.persistence);
        if !unchanged && !shape.head_only() {
            // Tens of kilobytes: queued where they lie, not copied.
            out.push_shared_prefix(body, body.len());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// (path, method) pairs.
    type Ops = BTreeSet<(String, String)>;

    /// Every (path, method) the document describes.
    fn documented() -> Ops {
        let doc: serde_json::Value = serde_json::from_slice(OPENAPI_JSON).unwrap();
        let mut ops = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                ops.insert((path.clone(), method.to_ascii_uppercase()));
            }
        }
        ops
    }

    /// Every (path, method) the route table serves: each route's path and
    /// aliases, with each method its Allow header lists.
    fn served() -> Ops {
        let mut ops = BTreeSet::new();
        for route in Route::ALL.into_iter().filter(|r| !r.is_internal()) {
            for path in std::iter::once(route.path()).chain(route.aliases().iter().copied()) {
                for method in route.allow().split(", ") {
                    ops.insert((path.to_string(), method.to_string()));
                }
            }
        }
        ops
    }

    #[test]
    fn the_document_describes_exactly_the_routes_served() {
        let (documented, served) = (documented(), served());
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes openapi.json lacks: {undocumented:?}"
        );
        assert!(
            unserved.is_empty(),
            "operations in openapi.json no route serves: {unserved:?}"
        );
    }

    #[test]
    fn every_operation_has_what_docs_shows() {
        let doc: serde_json::Value = serde_json::from_slice(OPENAPI_JSON).unwrap();
        let html = std::str::from_utf8(DOCS_HTML).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().unwrap();
                assert!(op["summary"].is_string(), "{method} {path}");
                assert!(op["x-curl"].is_string(), "{method} {path}: an example");
                assert!(!op["responses"].as_object().unwrap().is_empty());
                assert!(html.contains(&format!("id=\"{id}\"")), "{id} in /docs");
            }
        }
        assert!(!html.contains("<script") && !html.contains("src="));
        assert!(!html.contains("http://") || html.contains("curl"));
    }

    #[test]
    fn tags_are_strong_and_quoted() {
        for tag in [OPENAPI_ETAG, DOCS_ETAG] {
            assert_eq!(tag.len(), 34, "{tag}");
            assert!(tag.starts_with('"') && tag.ends_with('"'), "{tag}");
        }
        assert_ne!(OPENAPI_ETAG, DOCS_ETAG);
    }
}
