//! placeholder
use axum::response::Html;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("../../static/index.html"))
}
