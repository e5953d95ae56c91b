//! Who may read `/metrics` and `/api/`: whoever presents the admin
//! credential as `Authorization: Bearer <credential>`.

use std::fmt;

use terrace_rpc::ClusterSecret;

use crate::config::AdminConfig;
use crate::error::AdminError;

/// The credential admin requests must present: the admin token
/// (`admin.token_file`) if one is configured, else the cluster secret if the
/// service has one, else none (open). `Debug` names which, never the bytes.
#[derive(Clone)]
pub enum AdminCredential {
    /// No credential: every request is served.
    Open,
    /// The admin token from `admin.token_file`.
    Token(ClusterSecret),
    /// The cluster secret.
    ClusterSecret(ClusterSecret),
}

impl fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl AdminCredential {
    /// The credential `config` and the service's cluster secret give. Reads
    /// `config.token_file` (a blocking read of a small file, at start).
    pub fn resolve(
        config: &AdminConfig,
        cluster_secret: Option<&ClusterSecret>,
    ) -> Result<Self, AdminError> {
        if let Some(path) = &config.token_file {
            let token = ClusterSecret::load(path).map_err(|source| AdminError::TokenFile {
                path: path.clone(),
                source: Box::new(source),
            })?;
            return Ok(AdminCredential::Token(token));
        }
        Ok(cluster_secret.map_or(AdminCredential::Open, |s| {
            AdminCredential::ClusterSecret(s.clone())
        }))
    }

    /// Whether requests are served without a credential.
    pub fn is_open(&self) -> bool {
        matches!(self, AdminCredential::Open)
    }

    /// What the credential is, for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            AdminCredential::Open => "no credential",
            AdminCredential::Token(_) => "the admin token",
            AdminCredential::ClusterSecret(_) => "the cluster secret",
        }
    }

    /// Whether a request whose `Authorization` header is `authorization`
    /// may read protected endpoints. The scheme is `Bearer` (any case); the
    /// credential is compared in constant time.
    pub(crate) fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let secret = match self {
            AdminCredential::Open => return true,
            AdminCredential::Token(s) | AdminCredential::ClusterSecret(s) => s,
        };
        let Some(value) = authorization else {
            return false;
        };
        let value = value.trim_ascii();
        const SCHEME: &[u8] = b"bearer ";
        if value.len() <= SCHEME.len() || !value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME) {
            return false;
        }
        secret.is(&value[SCHEME.len()..])
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    const TOKEN: &str = "an admin token of some length";

    fn token_file(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes()).expect("write token");
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
        file
    }

    #[test]
    fn the_token_file_wins_over_the_cluster_secret_which_wins_over_none() {
        let secret = ClusterSecret::from_bytes(b"the cluster secret, 16+ bytes").expect("long");
        let file = token_file(&format!("{TOKEN}\n"), 0o600);
        let with_file = AdminConfig {
            listen: None,
            token_file: Some(file.path().to_path_buf()),
        };
        let token = AdminCredential::resolve(&with_file, Some(&secret)).expect("token");
        assert!(matches!(token, AdminCredential::Token(_)), "{token:?}");
        assert!(token.admits(Some(format!("Bearer {TOKEN}").as_bytes())));
        assert!(token.admits(Some(format!("bearer {TOKEN}").as_bytes())));
        assert!(!token.admits(Some(b"Bearer the cluster secret, 16+ bytes")));
        assert!(!token.admits(Some(TOKEN.as_bytes())), "no scheme");
        assert!(!token.admits(Some(format!("Basic {TOKEN}").as_bytes())));
        assert!(!token.admits(Some(b"Bearer ")));
        assert!(!token.admits(None));

        let cluster =
            AdminCredential::resolve(&AdminConfig::default(), Some(&secret)).expect("secret");
        assert!(matches!(cluster, AdminCredential::ClusterSecret(_)));
        assert!(cluster.admits(Some(b"Bearer the cluster secret, 16+ bytes")));
        assert!(!cluster.admits(Some(format!("Bearer {TOKEN}").as_bytes())));

        let open = AdminCredential::resolve(&AdminConfig::default(), None).expect("open");
        assert!(open.is_open());
        assert!(open.admits(None));
        assert_eq!(
            format!("{open:?} / {token:?}"),
            "no credential / the admin token"
        );
    }

    #[test]
    fn a_token_file_others_may_read_or_too_short_is_refused_naming_it() {
        let readable = token_file(TOKEN, 0o644);
        let config = AdminConfig {
            listen: None,
            token_file: Some(readable.path().to_path_buf()),
        };
        let err = AdminCredential::resolve(&config, None).expect_err("mode 0644");
        let AdminError::TokenFile { path, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, readable.path());
        assert!(
            matches!(
                **source,
                terrace_rpc::SecurityError::NotPrivate { mode: 0o644, .. }
            ),
            "{source:?}"
        );
        let short = token_file("short", 0o600);
        let config = AdminConfig {
            listen: None,
            token_file: Some(short.path().to_path_buf()),
        };
        let err = AdminCredential::resolve(&config, None).expect_err("short");
        assert_eq!(
            err.to_string(),
            format!("admin.token_file {}", short.path().display())
        );
        let missing = AdminConfig {
            listen: None,
            token_file: Some("/nonexistent/terrace-admin-token".into()),
        };
        assert!(matches!(
            AdminCredential::resolve(&missing, None),
            Err(AdminError::TokenFile { .. })
        ));
    }
}
