//! The credentials file (`qcsecret`), with the original project's YAML keys:
//!
//! ```yaml
//! qy_access_key_id: 'QYACCESSKEYIDEXAMPLE'
//! qy_secret_access_key: 'SECRETACCESSKEY'
//! zone: 'pek3a'
//! # optional, with these defaults:
//! host: 'api.qingcloud.com'
//! port: 443
//! protocol: 'https'
//! uri: '/iaas/'
//! connection_retries: 3
//! connection_timeout: 30   # seconds
//! ```
//!
//! YAML parser: `serde_norway`. serde_yaml is deprecated; its two drop-in
//! forks are serde_norway and serde_yaml_ng, and serde_norway is the more
//! recently released (0.9.42, Dec 2024, vs 0.10.0, May 2024), keeps
//! serde_yaml's API and dual MIT/Apache licence, and its libyaml is a pure
//! Rust translation (no C). serde-saphyr is the more active project, but it
//! needs rustc 1.89 (the workspace promises 1.85) and renders source
//! snippets in its errors — the very line holding the secret.
//!
//! Unknown keys are ignored: the original file and the Go SDK's config carry
//! more (log_level, …) and refusing them would break existing Secrets.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::SecretKey;

/// `http` for the simulator and tests, `https` for the cloud.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    #[default]
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// Where and as whom to call the API. `Debug` is safe: the secret prints as
/// `<redacted>`.
#[derive(Clone, Debug, Deserialize)]
pub struct Credentials {
    #[serde(rename = "qy_access_key_id")]
    pub access_key_id: String,
    #[serde(rename = "qy_secret_access_key")]
    pub secret_access_key: SecretKey,
    pub zone: String,
    #[serde(default = "defaults::host")]
    pub host: String,
    #[serde(default = "defaults::port")]
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// The request path; it is also the path that is signed, byte for byte.
    #[serde(default = "defaults::uri")]
    pub uri: String,
    /// Retries after the first attempt, for busy/internal/transport errors.
    #[serde(default = "defaults::retries")]
    pub connection_retries: u32,
    /// Seconds, for connecting and for the whole request.
    #[serde(default = "defaults::timeout")]
    pub connection_timeout: u64,
}

mod defaults {
    pub fn host() -> String {
        "api.qingcloud.com".into()
    }
    pub fn port() -> u16 {
        443
    }
    pub fn uri() -> String {
        "/iaas/".into()
    }
    pub fn retries() -> u32 {
        3
    }
    pub fn timeout() -> u64 {
        30
    }
}

/// A credentials file that cannot be used. No variant carries the secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    // The io error is the source, not part of the message: printed as a
    // chain ("…: No such file or directory") it would appear twice.
    #[error(
        "the QingCloud credentials directory {} has neither config.yaml nor client.yaml \
         (create the Secret with: kubectl -n kube-system create secret generic qcsecret \
         --from-file=./config.yaml)",
        dir.display()
    )]
    NotInDir { dir: PathBuf },
    #[error("cannot read the QingCloud credentials file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The parser's message, scrubbed of the secret's text. Kept as a string
    /// rather than a `#[source]`: the parser's own `Display`/`Debug` are not
    /// ours to vouch for.
    #[error("the QingCloud credentials{} are not valid: {message}", origin(path))]
    Parse {
        path: Option<PathBuf>,
        message: String,
    },
    #[error("the QingCloud credentials{}: {field} {problem}", origin(path))]
    Invalid {
        path: Option<PathBuf>,
        field: &'static str,
        problem: &'static str,
    },
}

fn origin(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

/// The file names looked for in a credentials directory, in order.
const DIR_FILES: [&str; 2] = ["config.yaml", "client.yaml"];

impl Credentials {
    /// Credentials with every optional key at its default.
    pub fn new(
        access_key_id: impl Into<String>,
        secret: SecretKey,
        zone: impl Into<String>,
    ) -> Credentials {
        Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret,
            zone: zone.into(),
            host: defaults::host(),
            port: defaults::port(),
            protocol: Protocol::default(),
            uri: defaults::uri(),
            connection_retries: defaults::retries(),
            connection_timeout: defaults::timeout(),
        }
    }

    /// Reads the credentials file at `path`, or, when `path` is a
    /// directory (the `qcsecret` Secret mounted as a volume), its
    /// `config.yaml` (the original project's key: `kubectl create secret
    /// generic qcsecret --from-file=./config.yaml`), else its `client.yaml`.
    pub fn load(path: &Path) -> Result<Credentials, CredentialsError> {
        let file = if path.is_dir() {
            DIR_FILES
                .iter()
                .map(|name| path.join(name))
                .find(|f| f.exists())
                .ok_or_else(|| CredentialsError::NotInDir {
                    dir: path.to_owned(),
                })?
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| CredentialsError::Read {
            path: file.clone(),
            source,
        })?;
        Self::parse(&text, Some(&file))
    }

    pub fn from_yaml(text: &str) -> Result<Credentials, CredentialsError> {
        Self::parse(text, None)
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Credentials, CredentialsError> {
        let creds: Credentials =
            serde_norway::from_str(text).map_err(|e| CredentialsError::Parse {
                path: path.map(Path::to_owned),
                message: scrub(e.to_string(), text),
            })?;
        creds
            .check()
            .map_err(|(field, problem)| CredentialsError::Invalid {
                path: path.map(Path::to_owned),
                field,
                problem,
            })?;
        Ok(creds)
    }

    /// Validates values a parser cannot: done on load and again by
    /// `Client::new`, for credentials built in code.
    pub fn validate(&self) -> Result<(), CredentialsError> {
        self.check()
            .map_err(|(field, problem)| CredentialsError::Invalid {
                path: None,
                field,
                problem,
            })
    }

    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let empty = "must not be empty";
        if self.access_key_id.trim().is_empty() {
            return Err(("qy_access_key_id", empty));
        }
        if self.secret_access_key.is_empty() {
            return Err(("qy_secret_access_key", empty));
        }
        if self.zone.trim().is_empty() {
            return Err(("zone", empty));
        }
        if self.host.trim().is_empty() {
            return Err(("host", empty));
        }
        if !self.uri.starts_with('/') {
            return Err(("uri", "must start with '/' (the documented path is /iaas/)"));
        }
        if self.connection_timeout == 0 {
            return Err(("connection_timeout", "must be at least 1 second"));
        }
        Ok(())
    }

    /// `protocol://host:port` + `uri`, the URL every request goes to.
    pub fn endpoint(&self) -> String {
        let host = if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]", self.host) // a bare IPv6 literal
        } else {
            self.host.clone()
        };
        format!(
            "{}://{host}:{}{}",
            self.protocol.as_str(),
            self.port,
            self.uri
        )
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.connection_timeout)
    }
}

/// Removes the secret's text from a parser message. Belt and braces: the
/// secret's own deserializer never echoes it and libyaml's syntax errors
/// quote no values, but a parser upgrade must not be able to change that.
fn scrub(message: String, text: &str) -> String {
    let secret = text.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("qy_secret_access_key")?;
        let value = rest.trim_start().strip_prefix(':')?.trim();
        let value = value.trim_matches(['\'', '"']).trim();
        (!value.is_empty()).then_some(value)
    });
    match secret {
        Some(s) => message.replace(s, "<redacted>"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Sup3rS3cretValue";

    fn assert_clean(text: &str) {
        assert!(!text.contains(SECRET), "secret leaked: {text}");
    }

    #[test]
    fn full_file_and_defaults() {
        let c = Credentials::from_yaml(&format!(
            "qy_access_key_id: 'AKID'\nqy_secret_access_key: '{SECRET}'\nzone: 'PEK3A'\nlog_level: debug\n"
        ))
        .unwrap();
        assert_eq!(c.access_key_id, "AKID");
        assert_eq!(c.secret_access_key.expose(), SECRET);
        assert_eq!(c.zone, "PEK3A");
        assert_eq!(c.endpoint(), "https://api.qingcloud.com:443/iaas/");
        assert_eq!(c.connection_retries, 3);
        assert_eq!(c.timeout(), Duration::from_secs(30));

        let c = Credentials::from_yaml(&format!(
            "qy_access_key_id: AKID\nqy_secret_access_key: {SECRET}\nzone: sim1\nhost: 127.0.0.1\nport: 8080\nprotocol: http\nuri: /api/\nconnection_retries: 0\nconnection_timeout: 2\n"
        ))
        .unwrap();
        assert_eq!(c.endpoint(), "http://127.0.0.1:8080/api/");
        assert_eq!(c.connection_retries, 0);
        assert_eq!(c.timeout(), Duration::from_secs(2));
        let mut v6 = c.clone();
        v6.host = "::1".into();
        assert_eq!(v6.endpoint(), "http://[::1]:8080/api/");
    }

    #[test]
    fn a_mounted_secret_directory_is_read_as_the_original_secret_or_client_yaml() {
        let dir = tempfile::tempdir().unwrap();
        let e = Credentials::load(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither config.yaml nor client.yaml"),
            "{e}"
        );
        let yaml = |zone: &str| {
            format!("qy_access_key_id: AKID\nqy_secret_access_key: \"{SECRET}\"\nzone: {zone}\n")
        };
        std::fs::write(dir.path().join("client.yaml"), yaml("client")).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap().zone, "client");
        // The original project's key wins.
        std::fs::write(dir.path().join("config.yaml"), yaml("original")).unwrap();
        assert_eq!(Credentials::load(dir.path()).unwrap().zone, "original");
        // A file path still names the file.
        let c = Credentials::load(&dir.path().join("client.yaml")).unwrap();
        assert_eq!(c.zone, "client");
    }

    #[test]
    fn the_secret_never_shows() {
        let c = Credentials::from_yaml(&format!(
            "qy_access_key_id: AKID\nqy_secret_access_key: \"{SECRET}\"\nzone: pek3a\n"
        ))
        .unwrap();
        assert_clean(&format!("{c:?}"));
        assert_clean(&format!("{c:#?}"));
        assert_clean(&format!("{}", c.secret_access_key));

        let dir = tempfile::tempdir().unwrap();
        let missing = Credentials::load(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("cannot read"), "{missing}");
        assert_clean(&format!("{missing} {missing:?}"));
        let head = "qy_access_key_id: AKID\n";
        let cases = [
            // Syntax errors around the secret.
            (
                format!("{head}qy_secret_access_key: \"{SECRET}\nzone: z\n"),
                "quoted scalar",
            ),
            (
                format!("{head}qy_secret_access_key: {SECRET}: x\nzone: z\n"),
                "line 2",
            ),
            (
                format!("{head}  qy_secret_access_key: {SECRET}\nzone: z\n"),
                "line 2",
            ),
            (format!("- {SECRET}\n"), "sequence"),
            // Wrong shapes for the secret.
            (
                format!("{head}qy_secret_access_key: [{SECRET}]\nzone: z\n"),
                "qy_secret_access_key",
            ),
            (
                format!("{head}qy_secret_access_key: {{k: {SECRET}}}\nzone: z\n"),
                "qy_secret_access_key",
            ),
            (
                format!("{head}qy_secret_access_key: 1.5e3\nzone: z\n"),
                "put it in quotes",
            ),
            // Missing and invalid fields; the secret as another field's value.
            (
                format!("qy_secret_access_key: {SECRET}\nzone: z\n"),
                "qy_access_key_id",
            ),
            (format!("{head}qy_secret_access_key: {SECRET}\n"), "zone"),
            (
                format!("{head}qy_secret_access_key: {SECRET}\nzone: z\nport: {SECRET}\n"),
                "port",
            ),
            (
                format!("{head}qy_secret_access_key: {SECRET}\nzone: z\nuri: iaas\n"),
                "uri must start with '/'",
            ),
            (
                format!("{head}qy_secret_access_key: ''\nzone: z\n"),
                "qy_secret_access_key must not be empty",
            ),
        ];
        let path = dir.path().join("qcsecret");
        for (yaml, says) in cases {
            std::fs::write(&path, &yaml).unwrap();
            for e in [
                Credentials::load(&path).unwrap_err(),
                Credentials::from_yaml(&yaml).unwrap_err(),
            ] {
                let text = e.to_string();
                assert_clean(&text);
                assert_clean(&format!("{e:?}"));
                assert!(
                    text.contains("QingCloud credentials") && text.contains(says),
                    "{text}"
                );
            }
        }
        let e = Credentials::load(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn scrub_removes_the_raw_value() {
        let text = format!("qy_secret_access_key:   '{SECRET}'  \n");
        assert_eq!(
            scrub(format!("bad value {SECRET} here"), &text),
            "bad value <redacted> here"
        );
    }
}
