//! What a service gives the admin server: its readiness, its metrics and
//! its answers to `/api/v1/...`.

use prometheus_client::registry::Registry;

/// A service's side of the admin server. Called on the server's tasks for
/// each request: answers must come from state the service already holds,
/// quickly, and never change it.
pub trait AdminApp: Send + Sync + 'static {
    /// `Ok` when the service is ready for traffic (`/readyz` 200), else the
    /// one-line reason it is not (`/readyz` 503 with that text).
    fn ready(&self) -> Result<(), String>;

    /// Appends the service's metrics to `out` in the Prometheus text format,
    /// version 0.0.4 (usually by [`encode_metrics`] of its registry after
    /// refreshing the gauges it computes on demand).
    fn metrics(&self, out: &mut String) -> std::fmt::Result;

    /// Answers `GET /api/v1/{path}`: a JSON document, or why not.
    fn api(&self, request: &ApiRequest<'_>) -> Result<serde_json::Value, ApiError>;
}

/// Encodes `registry` in the Prometheus text format, version 0.0.4: a
/// counter registered as `x` is exported as `x_total`, with `# HELP` and
/// `# TYPE` lines before its samples.
pub fn encode_metrics(out: &mut String, registry: &Registry) -> std::fmt::Result {
    prometheus_client::encoding::prometheus_text::encode(out, registry)
}

/// A `GET /api/v1/...` request: the path after `/api/v1/` (as sent, not
/// percent-decoded) and the query string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRequest<'a> {
    path: &'a str,
    query: Option<&'a str>,
}

impl<'a> ApiRequest<'a> {
    pub fn new(path: &'a str, query: Option<&'a str>) -> Self {
        ApiRequest { path, query }
    }

    /// The path after `/api/v1/`: `jobs/0a1b/partitions`.
    pub fn path(&self) -> &'a str {
        self.path
    }

    /// The path's segments, empty ones (a trailing `/`) dropped:
    /// `["jobs", "0a1b", "partitions"]`.
    pub fn segments(&self) -> Vec<&'a str> {
        self.path.split('/').filter(|s| !s.is_empty()).collect()
    }

    /// The value of query parameter `name` (the first, if repeated; `""`
    /// for `?name`), as sent.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (key == name).then_some(value)
        })
    }

    /// The query parameters, in order, as sent.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter(|pair| !pair.is_empty())
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
    }
}

/// Why an API request gets no document; the text goes to the client as
/// `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 404: no such resource (an unknown path, a job this service does not know).
    #[error("{0}")]
    NotFound(String),
    /// 400: the request names something malformed (a job id that is not hex).
    #[error("{0}")]
    BadRequest(String),
}

impl ApiError {
    /// The 404 of a path no route takes.
    pub fn no_route(request: &ApiRequest<'_>) -> Self {
        ApiError::NotFound(format!("no API resource /api/v1/{}", request.path()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_and_query_parameters() {
        let r = ApiRequest::new("jobs/0a1b/partitions/", Some("job=ff&x&job=00&y=1"));
        assert_eq!(r.segments(), ["jobs", "0a1b", "partitions"]);
        assert_eq!(r.param("job"), Some("ff"));
        assert_eq!(r.param("x"), Some(""));
        assert_eq!(r.param("z"), None);
        assert_eq!(
            r.params().collect::<Vec<_>>(),
            [("job", "ff"), ("x", ""), ("job", "00"), ("y", "1")]
        );
        let bare = ApiRequest::new("", None);
        assert!(bare.segments().is_empty());
        assert_eq!(bare.param("job"), None);
        assert_eq!(
            ApiError::no_route(&ApiRequest::new("nope", None)).to_string(),
            "no API resource /api/v1/nope"
        );
    }
}
