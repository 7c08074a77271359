//! iPXE boot scripts and boot files over HTTP (with Content-Length and Range).

use std::net::{IpAddr, SocketAddr};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use crate::bootfiles::ResolveError;
use crate::dhcp::boot::script_url;
use crate::metrics::labels;
use crate::registry::BootDecision;

use super::{error, Shared};

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/boot.ipxe", get(script_by_query))
        .route("/boot/{*path}", get(boot_path))
        .route("/ipxe/{*path}", get(ipxe_file))
        .route("/images/{*path}", get(image_file))
}

#[derive(Deserialize)]
struct MacQuery {
    mac: String,
    #[serde(default)]
    via: Option<String>,
}

#[derive(Deserialize, Default)]
struct ViaQuery {
    /// How the PC came to iPXE (`floppy`, `usb`); absent means PXE.
    #[serde(default)]
    via: Option<String>,
}

/// The boot method put on the kernel command line for the agent to report.
fn boot_method(via: Option<&str>) -> &'static str {
    match via {
        Some("floppy") => "floppy",
        Some("usb") => "usb",
        _ => "pxe",
    }
}

async fn script_by_query(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<MacQuery>,
) -> Response {
    script(s, peer, &q.mac, boot_method(q.via.as_deref())).await
}

/// `/boot/<mac>.ipxe` is a script; `/boot/<mac>/<image>/<version>/initrd` a per-node initrd.
async fn boot_path(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    Query(q): Query<ViaQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(mac) = path.strip_suffix(".ipxe").filter(|m| !m.contains('/')) {
        return script(s, peer, mac, boot_method(q.via.as_deref())).await;
    }
    file(s, peer, format!("boot/{path}"), headers).await
}

async fn ipxe_file(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    file(s, peer, path, headers).await
}

async fn image_file(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    file(s, peer, format!("images/{path}"), headers).await
}

fn refuse(s: &Shared, peer: SocketAddr, status: StatusCode, reason: &str, what: &str) -> Response {
    tracing::debug!(%peer, "http: refused {what}: {reason}");
    s.metrics
        .http_refused
        .get_or_create(&labels(&[("reason", reason)]))
        .inc();
    error(status, format!("{what}: {reason}"))
}

async fn script(s: Shared, peer: SocketAddr, mac: &str, method: &'static str) -> Response {
    let Some(mac) = enlist_api::normalize_mac(mac) else {
        return refuse(&s, peer, StatusCode::BAD_REQUEST, "bad-mac", "boot script");
    };
    let ip = match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    };
    let reg = s.registry.clone();
    let m = mac.clone();
    let decision = tokio::task::spawn_blocking(move || reg.boot_decision(&m, ip)).await;
    let decision = match decision {
        Ok(Ok(d)) => d,
        Ok(Err(e)) => {
            tracing::error!(%mac, "boot script: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                "registry-error",
                "boot script",
            );
        }
        Err(e) => {
            tracing::error!(%mac, "boot script task: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "boot script",
            );
        }
    };
    let cfg = s.registry.config();
    let base = cfg.http.public_url.trim_end_matches('/');
    let text = match decision {
        BootDecision::LocalDisk => local_disk_script(),
        BootDecision::NotEnlisted => not_enlisted_script(&mac),
        BootDecision::Boot { name, image } => {
            let efi_image = cfg.images.efi_x64.clone().unwrap_or_else(|| image.clone());
            let images = s.files.images();
            let with_cmdline = |name: &str| {
                let version = images.current(name)?;
                let cmdline = images.cmdline(name, &version)?;
                Ok::<_, crate::image::store::ImageStoreError>((version, cmdline))
            };
            match (with_cmdline(&image), with_cmdline(&efi_image)) {
                (Ok((bios_ver, bios_cmdline)), Ok((efi_ver, efi_cmdline))) => {
                    let tftp = tftp_base(base);
                    let busids: Vec<String> = cfg
                        .images
                        .tftp_nics
                        .iter()
                        .filter_map(|id| crate::config::pci_busid(id))
                        .collect();
                    let p = ScriptParams {
                        base,
                        mac: &mac,
                        name: &name,
                        method,
                        cmdline: &cfg.images.cmdline,
                        tftp_base: &tftp,
                        tftp_busids: &busids,
                    };
                    node_script(
                        &p,
                        &ScriptImage {
                            name: &image,
                            version: &bios_ver,
                            cmdline: &bios_cmdline,
                        },
                        &ScriptImage {
                            name: &efi_image,
                            version: &efi_ver,
                            cmdline: &efi_cmdline,
                        },
                    )
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(%mac, "boot script: no image to boot: {e}");
                    retry_script(
                        &format!("no image published on the head ({e})"),
                        &script_url(base, &mac),
                    )
                }
            }
        }
    };
    s.metrics
        .http_transfers
        .get_or_create(&labels(&[("kind", "script")]))
        .inc();
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

pub struct ScriptParams<'a> {
    pub base: &'a str,
    pub mac: &'a str,
    pub name: &'a str,
    /// `pxe`, `floppy` or `usb`: reported by the agent.
    pub method: &'a str,
    /// The head's `images.cmdline`, after the image's own options.
    pub cmdline: &'a str,
    /// `tftp://<head>`: where cards listed in `tftp_busids` fetch kernel and initrd.
    pub tftp_base: &'a str,
    /// iPXE `busid` values of cards that use TFTP (see `images.tftp_nics`).
    pub tftp_busids: &'a [String],
}

/// One published image version, as a script names it.
pub struct ScriptImage<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// The kernel options from the image's manifest.
    pub cmdline: &'a str,
}

/// The iPXE script that boots a node: the default image on BIOS, the `efi_x64` one on UEFI.
pub fn node_script(p: &ScriptParams, bios: &ScriptImage, efi: &ScriptImage) -> String {
    let mac_path = p.mac.replace(':', "-");
    let section = |label: &str, files: &str, img: &ScriptImage| {
        let cmdline = [img.cmdline, p.cmdline]
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            ":{label}\n\
             echo enlist: {name} boots {image} {version} from {files}\n\
             kernel {files}/images/{image}/{version}/vmlinuz initrd=initrd enlist.head={base} enlist.node={name} enlist.boot={method} BOOTIF=01-${{netX/mac:hexhyp}} {cmdline} || goto failed\n\
             initrd --name initrd {files}/boot/{mac_path}/{image}/{version}/initrd || goto failed\n\
             boot || goto failed\n",
            name = p.name,
            method = p.method,
            base = p.base,
            image = img.name,
            version = img.version,
        )
    };
    let tftp_checks: String = p
        .tftp_busids
        .iter()
        .map(|b| format!("iseq ${{netX/busid}} {b} && goto bios_tftp ||\n"))
        .collect();
    format!(
        "#!ipxe\n\
         echo enlist: network card ${{netX/busid}} (${{netX/chip}})\n\
         iseq ${{platform}} efi && goto efi ||\n\
         {tftp_checks}\
         goto bios\n\
         {}{}{}\
         :failed\n\
         echo enlist: boot failed; retrying in 10 s\n\
         sleep 10\n\
         chain --autofree {} || goto failed\n",
        section("bios", p.base, bios),
        section("bios_tftp", p.tftp_base, bios),
        section("efi", p.base, efi),
        script_url(p.base, p.mac),
    )
}

/// `http://10.77.0.1:8080` -> `tftp://10.77.0.1`.
fn tftp_base(http_base: &str) -> String {
    let host = http_base
        .trim_start_matches("http://")
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    format!("tftp://{host}")
}

fn local_disk_script() -> String {
    "#!ipxe\n\
     echo enlist: this PC is released; booting from its own disk\n\
     iseq ${platform} efi && exit ||\n\
     sanboot --no-describe --drive 0x80 || exit\n"
        .into()
}

fn not_enlisted_script(mac: &str) -> String {
    format!(
        "#!ipxe\n\
         echo enlist: {mac} is not enlisted here (enrollment policy); booting from its own disk\n\
         sleep 5\n\
         exit\n"
    )
}

fn retry_script(why: &str, url: &str) -> String {
    format!(
        "#!ipxe\n\
         echo enlist: {why}; retrying in 30 s\n\
         sleep 30\n\
         chain --autofree {url}\n"
    )
}

/// Parse a single `bytes=` range against a length. `None` means "serve it all".
fn parse_range(value: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Multipart ranges are never needed for boot files; serve the whole file.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let a: u64 = a.parse().map_err(|_| ())?;
            let b: u64 = b.parse().map_err(|_| ())?;
            (a, b.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

async fn file(s: Shared, peer: SocketAddr, path: String, headers: HeaderMap) -> Response {
    let files = s.files.clone();
    let p = path.clone();
    let blob = match tokio::task::spawn_blocking(move || files.resolve(&p)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("http file task: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &path,
            );
        }
    };
    let blob = match blob {
        Ok(b) => b,
        Err(e @ ResolveError::Refused { .. }) => {
            return refuse(&s, peer, StatusCode::FORBIDDEN, e.reason(), &path)
        }
        Err(e @ ResolveError::NotFound(_)) => {
            return refuse(&s, peer, StatusCode::NOT_FOUND, e.reason(), &path)
        }
        Err(e) => {
            tracing::warn!(%peer, "http: {e}");
            return refuse(
                &s,
                peer,
                StatusCode::INTERNAL_SERVER_ERROR,
                e.reason(),
                &path,
            );
        }
    };
    let len = blob.len();
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(v) => match parse_range(v, len) {
            Ok(r) => r,
            Err(()) => {
                let mut r = refuse(
                    &s,
                    peer,
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "bad-range",
                    &path,
                );
                if let Ok(v) = format!("bytes */{len}").parse() {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return r;
            }
        },
        None => None,
    };
    let (start, end) = range.unwrap_or((0, len));
    if start == 0 {
        let (reg, mac, kind, p) = (
            s.registry.clone(),
            blob.mac.clone(),
            blob.kind,
            path.clone(),
        );
        // Registry writes hit the disk: keep them off the async workers, and off the transfer's path.
        tokio::task::spawn_blocking(move || reg.fetched_http(mac.as_deref(), peer.ip(), kind, &p));
        s.metrics
            .http_transfers
            .get_or_create(&labels(&[("kind", blob.kind.as_str())]))
            .inc();
    }
    s.metrics.http_bytes.inc_by(end - start);
    let chunks = blob.slice(start, end);
    let body = Body::from_stream(futures_util::stream::iter(
        chunks.into_iter().map(Ok::<_, std::convert::Infallible>),
    ));
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::ACCEPT_RANGES, "bytes");
    if range.is_some() {
        resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end - 1),
        );
    }
    resp.body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 100))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 1000))));
        assert_eq!(parse_range("bytes=990-5000", 1000), Ok(Some((990, 1000))));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=5-2", 1000), Err(()));
        assert_eq!(parse_range("bytes=a-b", 1000), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
    }

    #[test]
    fn script_names_kernel_initrd_and_cmdline() {
        let p = ScriptParams {
            base: "http://10.77.0.1:8080",
            mac: "52:54:00:77:00:10",
            name: "lab-pc-10",
            method: "pxe",
            cmdline: "console=ttyS0",
            tftp_base: "tftp://10.77.0.1",
            tftp_busids: &["01:80:86:12:29".to_string()],
        };
        let bios = ScriptImage {
            name: "i586",
            version: "v1",
            cmdline: "cryptomgr.notests",
        };
        let efi = ScriptImage {
            name: "x86_64",
            version: "v2",
            cmdline: "",
        };
        let s = node_script(&p, &bios, &efi);
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.77.0.1:8080/images/i586/v1/vmlinuz initrd=initrd enlist.head=http://10.77.0.1:8080 enlist.node=lab-pc-10 enlist.boot=pxe BOOTIF=01-${netX/mac:hexhyp} cryptomgr.notests console=ttyS0 || goto failed"));
        assert!(
            s.contains("BOOTIF=01-${netX/mac:hexhyp} console=ttyS0 || goto failed"),
            "no stray space without image options: {s}"
        );
        assert!(s.contains(
            "initrd --name initrd http://10.77.0.1:8080/boot/52-54-00-77-00-10/i586/v1/initrd"
        ));
        assert!(s.contains("/images/x86_64/v2/vmlinuz"));
        assert!(s.contains("chain --autofree http://10.77.0.1:8080/boot/52-54-00-77-00-10.ipxe"));
        assert!(s.contains("iseq ${netX/busid} 01:80:86:12:29 && goto bios_tftp ||"));
        assert!(s.contains("kernel tftp://10.77.0.1/images/i586/v1/vmlinuz"));
        assert!(s.contains(
            "initrd --name initrd tftp://10.77.0.1/boot/52-54-00-77-00-10/i586/v1/initrd"
        ));
        assert_eq!(tftp_base("http://10.77.0.1:8080/"), "tftp://10.77.0.1");
    }
}
