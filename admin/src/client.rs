//! A minimal HTTP/1.1 GET for reading an admin server: what tests, probes
//! and tools (`terrace status`) need, bounded in time and size. One request
//! per connection (`Connection: close`); the reply is read to its end.

use std::time::Duration;

use terrace_rpc::clock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest reply read (head and body).
pub const MAX_REPLY_BYTES: u64 = 64 * 1024 * 1024;

/// A reply read off the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Header names in lower case, with their values, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("connect to {address}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {path} from {address}")]
    Io {
        address: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("GET {path} from {address}: no complete reply within {within:?}")]
    Timeout {
        address: String,
        path: String,
        within: Duration,
    },
    #[error("GET {path} from {address}: the reply is not HTTP/1.1 ({why})")]
    Malformed {
        address: String,
        path: String,
        why: &'static str,
    },
}

/// `GET {path}` from the admin server at `address` (`host:port`), with
/// `Authorization: Bearer {bearer}` when given; the whole exchange within
/// `within`. The body must be UTF-8 (every admin reply is).
pub async fn get(
    address: &str,
    path: &str,
    bearer: Option<&str>,
    within: Duration,
) -> Result<Reply, GetError> {
    let timeout = || GetError::Timeout {
        address: address.to_string(),
        path: path.to_string(),
        within,
    };
    clock::timeout(within, exchange(address, path, bearer))
        .await
        .map_err(|_| timeout())?
}

async fn exchange(address: &str, path: &str, bearer: Option<&str>) -> Result<Reply, GetError> {
    let io = |source| GetError::Io {
        address: address.to_string(),
        path: path.to_string(),
        source,
    };
    let malformed = |why| GetError::Malformed {
        address: address.to_string(),
        path: path.to_string(),
        why,
    };
    let mut stream = TcpStream::connect(address)
        .await
        .map_err(|source| GetError::Connect {
            address: address.to_string(),
            source,
        })?;
    let auth = bearer
        .map(|b| format!("Authorization: Bearer {b}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut bytes = Vec::new();
    (&mut stream)
        .take(MAX_REPLY_BYTES + 1)
        .read_to_end(&mut bytes)
        .await
        .map_err(io)?;
    if bytes.len() as u64 > MAX_REPLY_BYTES {
        return Err(malformed("longer than MAX_REPLY_BYTES"));
    }
    let text = String::from_utf8(bytes).map_err(|_| malformed("not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Reply {
        status,
        headers,
        body: body.to_string(),
    })
}
