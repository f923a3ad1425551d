//! `GET /`: the chat page, one self-contained HTML file built into the binary (no external
//! host). It streams answers through `/chat/stream` and keeps the key and the conversation in
//! the browser's localStorage.

use axum::response::Html;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("../../static/index.html"))
}
