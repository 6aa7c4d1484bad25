//! A minimal HTTP/1.1 client with keep-alive: enough for `PUT /api/moves`,
//! `POST /tracks` and `GET /api/vehicles/{v}/track`, without an HTTP client crate.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// An HTTP failure.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, reading or writing failed.
    #[error("HTTP I/O with {addr}: {source}")]
    Io {
        /// The server.
        addr: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The answer was not HTTP/1.1 as expected.
    #[error("bad HTTP answer from {addr}: {why}")]
    Protocol {
        /// The server.
        addr: String,
        /// Why.
        why: String,
    },
    /// No answer in time.
    #[error("HTTP request to {0} timed out")]
    Timeout(String),
    /// Not an `http://host:port` URL.
    #[error("expected http://host:port, got {0:?}")]
    BadUrl(String),
}

/// `host:port` of an `http://host:port[/]` URL.
pub fn parse_http_url(url: &str) -> Result<String, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::BadUrl(url.to_owned()))?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') {
        return Err(HttpError::BadUrl(url.to_owned()));
    }
    Ok(if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:80")
    })
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// One keep-alive connection, reopened when the server closes it.
pub struct Client {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    /// A client of `host:port` (connects on first use).
    pub fn new(addr: &str) -> Client {
        Client {
            addr: addr.to_owned(),
            conn: None,
        }
    }

    /// Sends a request, retrying once on a fresh connection if a kept one was closed.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let reused = self.conn.is_some();
        match tokio::time::timeout(
            Duration::from_secs(60),
            self.once(method, path, headers, body),
        )
        .await
        {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) if reused => {
                self.conn = None;
                tokio::time::timeout(
                    Duration::from_secs(60),
                    self.once(method, path, headers, body),
                )
                .await
                .map_err(|_| HttpError::Timeout(self.addr.clone()))?
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(HttpError::Timeout(self.addr.clone()))
            }
        }
    }

    async fn once(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let io = |source| HttpError::Io {
            addr: self.addr.clone(),
            source,
        };
        let proto = |why: &str| HttpError::Protocol {
            addr: self.addr.clone(),
            why: why.to_owned(),
        };
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).await.map_err(io)?;
            let _ = s.set_nodelay(true);
            self.conn = Some(BufReader::new(s));
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(proto("no connection"));
        };
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(k);
            head.push_str(": ");
            head.push_str(v);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        conn.get_mut().write_all(&req).await.map_err(io)?;
        let mut line = String::new();
        if conn.read_line(&mut line).await.map_err(io)? == 0 {
            return Err(proto("connection closed"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| proto("no status line"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await.map_err(io)? == 0 {
                return Err(proto("headers cut short"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await.map_err(io)?;
                let n = usize::from_str_radix(line.trim(), 16).map_err(|_| proto("bad chunk"))?;
                let mut chunk = vec![0; n + 2];
                conn.read_exact(&mut chunk).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body).await.map_err(io)?;
        } else {
            conn.read_to_end(&mut body).await.map_err(io)?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok(Response { status, body })
    }
}
