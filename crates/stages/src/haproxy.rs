//! HAProxy's runtime API (the `stats socket ... level admin`), as a [`TrafficBackend`].
//!
//! One command per connection, answered and closed (HAProxy's non-interactive mode). Commands
//! that change something answer nothing on success; any text is HAProxy's refusal ("No such
//! server.", "Absolute weight can only be between 0 and 256 inclusive.") and fails the call.
//! Reads parse `show servers state` and `show stat` by their header names, not positions.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::traffic::{ServerStatus, TrafficBackend};

/// How long one runtime API command may take, in milliseconds, connection included.
pub const HAPROXY_COMMAND_TIMEOUT_MS: u64 = 5_000;

/// Largest answer read from HAProxy, in bytes (`show stat` of a large configuration is big).
pub const MAX_HAPROXY_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// The highest weight HAProxy accepts.
pub const MAX_HAPROXY_WEIGHT: u32 = 256;

/// `srv_admin_state` bits (HAProxy's `SRV_ADMF_*`): forced, inherited, resolver and
/// configuration maintenance, and forced or inherited drain.
const ADMIN_MAINT_BITS: u32 = 0x01 | 0x02 | 0x04 | 0x20 | 0x40;
const ADMIN_DRAIN_BITS: u32 = 0x08 | 0x10;

/// Where the runtime API listens: a Unix socket path, or `ipv4@HOST:PORT` / `HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HaproxySocket {
    Unix(String),
    Tcp(String),
}

impl HaproxySocket {
    /// Reads an address as `stats socket` writes it.
    pub fn parse(text: &str) -> Result<HaproxySocket, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the HAProxy socket is empty".to_string());
        }
        if let Some(path) = text.strip_prefix("unix@") {
            return Ok(HaproxySocket::Unix(path.to_string()));
        }
        if text.starts_with('/') {
            return Ok(HaproxySocket::Unix(text.to_string()));
        }
        let address = text
            .strip_prefix("ipv4@")
            .or_else(|| text.strip_prefix("tcp@"))
            .unwrap_or(text);
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(HaproxySocket::Tcp(address.to_string()))
            }
            _ => Err(format!(
                "`{text}` is neither a socket path (/run/haproxy/admin.sock) nor HOST:PORT"
            )),
        }
    }
}

/// A client of one HAProxy's runtime API.
#[derive(Clone, Debug)]
pub struct Haproxy {
    socket: HaproxySocket,
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    command: &str,
) -> std::io::Result<Vec<u8>> {
    stream.write_all(command.as_bytes()).await?;
    stream.write_all(b"\n").await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    let mut chunk = [0_u8; 8192];
    loop {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Ok(answer);
        }
        answer.extend_from_slice(&chunk[..read]);
        if answer.len() > MAX_HAPROXY_ANSWER_BYTES {
            return Err(std::io::Error::other(format!(
                "the answer is longer than {MAX_HAPROXY_ANSWER_BYTES} bytes"
            )));
        }
    }
}

/// Splits a header line (`# a b c` or `# a,b,c`) and the rows under it into maps.
fn table(text: &str, separator: char) -> Vec<HashMap<String, String>> {
    let split = |line: &str| -> Vec<String> {
        if separator == ' ' {
            line.split_whitespace().map(str::to_string).collect()
        } else {
            line.split(separator)
                .map(|f| f.trim().to_string())
                .collect()
        }
    };
    let mut lines = text.lines().skip_while(|line| !line.starts_with('#'));
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names = split(header.trim_start_matches('#'));
    lines
        .filter(|line| !line.trim().is_empty())
        .map(|line| names.iter().cloned().zip(split(line)).collect())
        .collect()
}

fn split_target(target: &str) -> Result<(&str, &str), String> {
    match target.split_once('/') {
        Some((backend, server))
            if !backend.is_empty() && !server.is_empty() && !server.contains('/') =>
        {
            Ok((backend, server))
        }
        _ => Err(format!("`{target}` is not BACKEND/SERVER")),
    }
}

impl Haproxy {
    pub fn new(socket: HaproxySocket) -> Haproxy {
        Haproxy { socket }
    }

    /// Sends one command and returns HAProxy's answer.
    pub async fn command(&self, command: &str) -> Result<String, String> {
        if command.contains('\n') || command.contains(';') {
            return Err("one command at a time, without `;` or newlines".to_string());
        }
        let timeout = Duration::from_millis(HAPROXY_COMMAND_TIMEOUT_MS);
        let exchanged = tokio::time::timeout(timeout, async {
            match &self.socket {
                HaproxySocket::Unix(path) => {
                    exchange(tokio::net::UnixStream::connect(path).await?, command).await
                }
                HaproxySocket::Tcp(address) => {
                    exchange(tokio::net::TcpStream::connect(address).await?, command).await
                }
            }
        })
        .await;
        let where_ = match &self.socket {
            HaproxySocket::Unix(path) => path.clone(),
            HaproxySocket::Tcp(address) => address.clone(),
        };
        match exchanged {
            Err(_) => Err(format!(
                "HAProxy at {where_} did not answer `{command}` within {HAPROXY_COMMAND_TIMEOUT_MS}ms"
            )),
            Ok(Err(error)) => Err(format!("HAProxy at {where_}: `{command}`: {error}")),
            Ok(Ok(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// Sends a command that answers nothing when it succeeds.
    async fn change(&self, command: &str) -> Result<(), String> {
        let answer = self.command(command).await?;
        let answer = answer.trim();
        if answer.is_empty() {
            Ok(())
        } else {
            Err(format!("HAProxy refused `{command}`: {answer}"))
        }
    }
}

#[async_trait]
impl TrafficBackend for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    async fn status(&self, target: &str) -> Result<ServerStatus, String> {
        let (backend, server) = split_target(target)?;
        let answer = self
            .command(&format!("show servers state {backend}"))
            .await?;
        let rows = table(&answer, ' ');
        if rows.is_empty() {
            return Err(format!(
                "HAProxy has no backend `{backend}`: {}",
                answer.trim()
            ));
        }
        let row = rows
            .iter()
            .find(|row| row.get("srv_name").map(String::as_str) == Some(server))
            .ok_or_else(|| format!("HAProxy's backend `{backend}` has no server `{server}`"))?;
        let number = |name: &str| -> Result<u32, String> {
            row.get(name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("HAProxy's `{name}` for {target} is not a number"))
        };
        let admin = number("srv_admin_state")?;
        let stat = self.command(&format!("show stat {backend} 4 -1")).await?;
        let sessions = table(&stat, ',')
            .iter()
            .find(|row| {
                row.get("pxname").map(String::as_str) == Some(backend)
                    && row.get("svname").map(String::as_str) == Some(server)
            })
            .and_then(|row| row.get("scur").and_then(|v| v.parse().ok()))
            .ok_or_else(|| format!("HAProxy's statistics have no sessions for {target}"))?;
        Ok(ServerStatus {
            weight: number("srv_uweight")?,
            initial_weight: number("srv_iweight")?,
            maintenance: admin & ADMIN_MAINT_BITS != 0,
            draining: admin & ADMIN_DRAIN_BITS != 0,
            up: number("srv_op_state")? == 2,
            sessions,
        })
    }

    async fn set_weight(&self, target: &str, weight: u32) -> Result<(), String> {
        split_target(target)?;
        if weight > MAX_HAPROXY_WEIGHT {
            return Err(format!(
                "weight {weight} is above HAProxy's {MAX_HAPROXY_WEIGHT}"
            ));
        }
        self.change(&format!("set server {target} weight {weight}"))
            .await
    }

    async fn set_state(&self, target: &str, state: &str) -> Result<(), String> {
        split_target(target)?;
        if !matches!(state, "ready" | "drain" | "maint") {
            return Err(format!("`{state}` is not ready, drain or maint"));
        }
        self.change(&format!("set server {target} state {state}"))
            .await
    }

    /// HAProxy ends a server's sessions only all at once (`shutdown sessions server`).
    async fn end_sessions(&self, target: &str, fraction: f64) -> Result<u64, String> {
        split_target(target)?;
        if fraction < 1.0 {
            return Err(format!(
                "HAProxy ends a server's sessions only all at once, not {:.0}% of them; give a \
                 `restart` command to tear them down in batches",
                fraction * 100.0
            ));
        }
        let open = self.status(target).await?.sessions;
        self.change(&format!("shutdown sessions server {target}"))
            .await?;
        Ok(open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockets_are_read_as_haproxy_writes_them() {
        assert_eq!(
            HaproxySocket::parse("/run/haproxy/admin.sock"),
            Ok(HaproxySocket::Unix("/run/haproxy/admin.sock".to_string()))
        );
        assert_eq!(
            HaproxySocket::parse("ipv4@127.0.0.1:9999"),
            Ok(HaproxySocket::Tcp("127.0.0.1:9999".to_string()))
        );
        assert!(HaproxySocket::parse("haproxy").is_err());
        assert!(split_target("web").is_err());
        assert!(split_target("web/s1/x").is_err());
        assert_eq!(split_target("web/s1"), Ok(("web", "s1")));
    }

    #[test]
    fn tables_are_read_by_their_header_names() {
        let state = "1\n# be_id be_name srv_id srv_name srv_admin_state srv_uweight\n\
                     3 web 1 s1 8 40\n3 web 2 s2 0 100\n\n";
        let rows = table(state, ' ');
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["srv_name"], "s1");
        assert_eq!(rows[0]["srv_uweight"], "40");
        let stat = "# pxname,svname,qcur,qmax,scur\nweb,s1,0,0,3\nweb,s2,0,0,0\n";
        assert_eq!(table(stat, ',')[0]["scur"], "3");
    }
}
