//! The CLI's way to a running head: HTTP/1.1 over its admin socket (`<state_dir>/admin.sock`,
//! root only), so the commands work whatever `http.listen` and `admin.listen` say, and no
//! password or token crosses a network.

use std::path::{Path, PathBuf};

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

/// A running head, reached through its admin socket.
pub struct Head {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

/// The head that serves `config`.
pub fn head(config: &Path) -> anyhow::Result<Head> {
    let cfg = enlist::config::Config::load(config)?;
    let socket = cfg.state_dir.join(enlist::http::auth::ADMIN_SOCKET);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(Head { socket, rt })
}

impl Head {
    /// An admin API call with an optional JSON body; its JSON answer (null for 204), or the
    /// head's error message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, bytes) = self
            .rt
            .block_on(self.send(method, path, body))
            .with_context(|| self.unreachable())?;
        let json: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{method} {path}: the head's answer is not JSON"))?
        };
        if !(200..300).contains(&status) {
            anyhow::bail!(
                "{method} {path}: HTTP {status}: {}",
                json["error"].as_str().unwrap_or("(no detail)")
            );
        }
        Ok(json)
    }

    fn unreachable(&self) -> String {
        format!(
            "no head answers on {} (is `enlist serve` running with this config, and are you root?)",
            self.socket.display()
        )
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let payload = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => vec![],
        };
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "enlist")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}
