//! The control socket: lets another process ask a running headless compositor for
//! screenshots, toplevels and counters.
//!
//! One JSON object per line each way. Requests:
//! - `{"screenshot": "/path/out.png"}` → `{"ok": {"width": W, "height": H}}`
//! - `{"toplevel_screenshot": {"title": T, "app_id": A, "path": P}}` (title/app_id optional)
//! - `{"toplevels": null}` → `{"ok": [{"title":…, "app_id":…, "rect":[x,y,w,h], "mapped":…}]}`
//! - `{"wait_toplevel": {"title": T, "app_id": A, "timeout_ms": N}}` → the toplevel
//! - `{"stats": null}` → `{"ok": {…counters…}}`
//!
//! Errors answer `{"error": "what failed"}`; the connection stays usable. A request line is at
//! most [`MAX_REQUEST`] bytes.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::{Headless, ToplevelMatch};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum ControlRequest {
    Screenshot(PathBuf),
    ToplevelScreenshot {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        app_id: Option<String>,
        path: PathBuf,
    },
    Toplevels(()),
    WaitToplevel {
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        app_id: Option<String>,
        #[serde(default = "default_timeout")]
        timeout_ms: u64,
    },
    Stats(()),
}

fn default_timeout() -> u64 {
    10_000
}

/// Serves the control socket at `path` on a background thread, as long as the process runs.
pub fn serve(headless: Arc<Headless>, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::thread::Builder::new()
        .name("headless-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        let headless = headless.clone();
                        let _ = std::thread::Builder::new()
                            .name("headless-control-client".into())
                            .spawn(move || handle_connection(&headless, stream));
                    }
                    Err(err) => warn!(%err, "control socket accept failed"),
                }
            }
        })?;
    Ok(())
}

fn handle_connection(headless: &Headless, stream: UnixStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(err) => {
                debug!(%err, "control connection closed");
                return;
            }
        }
        let response = if line.len() > MAX_REQUEST {
            json!({ "error": format!("request longer than {MAX_REQUEST} bytes") })
        } else {
            match handle_line(headless, &line) {
                Ok(value) => json!({ "ok": value }),
                Err(err) => json!({ "error": format!("{err:#}") }),
            }
        };
        let mut out = response.to_string();
        out.push('\n');
        if writer.write_all(out.as_bytes()).is_err() || line.len() > MAX_REQUEST {
            return;
        }
    }
}

use std::io::Read as _;

fn handle_line(headless: &Headless, line: &[u8]) -> Result<Value> {
    let request: ControlRequest = serde_json::from_slice(line).context("bad request")?;
    Ok(match request {
        ControlRequest::Screenshot(path) => {
            let image = headless.screenshot()?;
            image.save_png(&path)?;
            json!({ "width": image.width, "height": image.height })
        }
        ControlRequest::ToplevelScreenshot {
            title,
            app_id,
            path,
        } => {
            let image = headless.toplevel_image(&ToplevelMatch { title, app_id })?;
            image.save_png(&path)?;
            json!({ "width": image.width, "height": image.height })
        }
        ControlRequest::Toplevels(()) => serde_json::to_value(headless.toplevels()?)?,
        ControlRequest::WaitToplevel {
            title,
            app_id,
            timeout_ms,
        } => {
            let timeout = Duration::from_millis(timeout_ms.min(300_000));
            serde_json::to_value(
                headless.wait_for_toplevel(&ToplevelMatch { title, app_id }, timeout)?,
            )?
        }
        ControlRequest::Stats(()) => serde_json::to_value(headless.stats())?,
    })
}

/// Sends one request to a control socket and returns the `ok` value (client side, for tests
/// and scripts).
pub fn request(path: &Path, request: &Value) -> Result<Value> {
    let mut stream =
        UnixStream::connect(path).with_context(|| format!("connecting to {}", path.display()))?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut response = String::new();
    BufReader::new(stream).read_line(&mut response)?;
    let mut value: Value = serde_json::from_str(&response).context("bad response")?;
    if let Some(err) = value.get("error") {
        return Err(anyhow!("{}", err.as_str().unwrap_or("error")));
    }
    Ok(value.get_mut("ok").map(Value::take).unwrap_or(Value::Null))
}
