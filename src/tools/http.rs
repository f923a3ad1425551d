//! HTTP tools: a call POSTs its arguments (a JSON object) as `application/json` to the tool's
//! URL with the tool's headers, through one pooled client; a 2xx body is the result (as text),
//! anything else an error for the model. Redirects are not followed and no proxy is taken from
//! the environment: a call reaches exactly the URL in the file.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};

use super::{ToolError, ToolSpec};
use crate::config::agents::HttpToolDef;

/// The client every HTTP tool shares (its connection pool).
pub fn client() -> reqwest::Client {
    // reqwest (without a provider of its own) panics unless one is installed.
    crate::llm::openai::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

pub struct HttpTool {
    def: HttpToolDef,
    client: reqwest::Client,
    validator: Option<std::sync::Arc<jsonschema::Validator>>,
}

impl HttpTool {
    pub fn new(def: HttpToolDef, client: reqwest::Client) -> Self {
        let validator = super::compile(&def.parameters);
        Self {
            def,
            client,
            validator,
        }
    }

    pub fn validator(&self) -> Option<std::sync::Arc<jsonschema::Validator>> {
        self.validator.clone()
    }

    pub fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: self.def.name.clone(),
            description: self.def.description.clone(),
            parameters: self.def.parameters.clone(),
            source: "http".into(),
        }
    }

    /// POSTs the arguments; reads at most `max` bytes of the answer (and one more, so that the
    /// caller sees that it was cut).
    pub async fn call(&self, args: &Map<String, Value>, max: usize) -> Result<String, ToolError> {
        let mut req = self.client.post(&self.def.url).json(args);
        for (name, value) in &self.def.headers {
            req = req.header(name, value.expose());
        }
        // reqwest's errors name the URL, which may hold a secret: never shown.
        let response = req.send().await.map_err(|e| {
            ToolError::Unavailable(format!(
                "the tool could not be reached: {}",
                e.without_url()
            ))
        })?;
        let status = response.status();
        let mut body = Vec::new();
        let mut chunks = response.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| {
                ToolError::Failed(format!("the tool's answer broke off: {}", e.without_url()))
            })?;
            body.extend_from_slice(&chunk);
            if body.len() > max {
                break;
            }
        }
        let text = String::from_utf8_lossy(&body).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            let text = super::truncate(text, 500);
            Err(ToolError::Failed(format!(
                "the tool answered {}: {text}",
                status.as_u16()
            )))
        }
    }
}
