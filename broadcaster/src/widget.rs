//! The widget client, `widget/threadcast.js` and its types, served at `/widget/` so that pages
//! can import it from the broadcaster. Compiled in; public, and the same for everyone.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::AppState;

const THREADCAST_JS: &str = include_str!("../../widget/threadcast.js");
const THREADCAST_D_TS: &str = include_str!("../../widget/threadcast.d.ts");

/// The widget routes. Browsers refuse module scripts of any other type than JavaScript's.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/widget/threadcast.js",
            get(|| file("text/javascript; charset=utf-8", THREADCAST_JS)),
        )
        .route(
            "/widget/threadcast.d.ts",
            get(|| file("application/typescript; charset=utf-8", THREADCAST_D_TS)),
        )
}

/// A compiled-in file. `no-cache` so that a rebuilt broadcaster's page is what the browser shows.
pub(crate) async fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}
