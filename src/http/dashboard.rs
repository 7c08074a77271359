//! The dashboard's static assets, embedded in the binary (no JavaScript toolchain needed), and
//! the OpenAPI document.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Shared;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { page(OPENAPI, "application/json") }),
        )
}

fn page(body: &'static str, ctype: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    /// The served document is the one the API types make. After changing them:
    /// `ENLIST_WRITE_OPENAPI=1 cargo test openapi_json` rewrites the file.
    #[test]
    fn openapi_json_is_what_the_api_types_generate() {
        let made = enlist_api::openapi::document_text();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/openapi.json");
        if std::env::var_os("ENLIST_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &made).unwrap();
        }
        assert!(
            made == super::OPENAPI,
            "src/http/openapi.json differs from what enlist_api::openapi makes: \
             run ENLIST_WRITE_OPENAPI=1 cargo test openapi_json"
        );
    }
}
