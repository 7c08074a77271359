//! The CLI's way to a running head: HTTP/1.1 over its admin socket (`<state_dir>/admin.sock`,
//! root only), so the commands work whatever `http.listen` and `admin.listen` say, and no
//! password or token crosses a network.

use std::path::{Path, PathBuf};

use anyhow::Context;
use enlist_api::admin::ErrorBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

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
    /// `GET path`, its answer read as `T`.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, vec![])
    }

    /// `POST path` with `body` as JSON (none when `None`), its answer read as `T`.
    pub fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let payload = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => vec![],
        };
        self.call("POST", path, payload)
    }

    /// `DELETE path`, its answer read as `T`.
    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("DELETE", path, vec![])
    }

    /// An admin API call; its answer, or the head's error message.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<T> {
        let (status, bytes) = self
            .rt
            .block_on(self.send(method, path, payload))
            .with_context(|| self.unreachable())?;
        if !(200..300).contains(&status) {
            let why = serde_json::from_slice::<ErrorBody>(&bytes)
                .map_or_else(|_| "(no detail)".to_string(), |e| e.error);
            anyhow::bail!("{method} {path}: HTTP {status}: {why}");
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{method} {path}: the head's answer is not what this enlist reads (a head of another version?)"))
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
        payload: Vec<u8>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::net::UnixStream::connect(&self.socket).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
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
