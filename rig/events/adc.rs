//! Where Application Default Credentials come from, and a quick look at whether that source
//! gives a token, before any Google client waits on it.
//!
//! With neither `GOOGLE_APPLICATION_CREDENTIALS` nor gcloud's file, Google's auth crate falls
//! back to the metadata server and retries it for about a minute before failing with
//! "transient errors". On a GCE VM (where staging runs start) the metadata server *is* the
//! credential, so it is not refused: it is asked once, briefly, and used when it answers.
//! The order of the sources is the crate's own (AIP-4110: the variable, gcloud's file, the
//! metadata server, `GCE_METADATA_HOST` overriding the last one's address).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use google_cloud_auth::credentials::CacheableResource;

/// How long the metadata server may take to hand out a token (it answers in milliseconds on
/// a VM; off a VM its name does not resolve, or the override points nowhere).
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a file's credentials may take to become a token (an exchange with Google's
/// OAuth endpoint, or an impersonation).
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

const METADATA_ROOT: &str = "http://metadata.google.internal";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// What Application Default Credentials will be made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The file `GOOGLE_APPLICATION_CREDENTIALS` names.
    Variable(PathBuf),
    /// gcloud's file (`gcloud auth application-default login`).
    Gcloud(PathBuf),
    /// No file: the metadata server at this base URL.
    MetadataServer(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Variable(p) => write!(f, "GOOGLE_APPLICATION_CREDENTIALS ({})", p.display()),
            Source::Gcloud(p) => write!(f, "gcloud's application-default file ({})", p.display()),
            Source::MetadataServer(url) => write!(f, "the metadata server at {url}"),
        }
    }
}

const WHAT_TO_DO: &str = "run `gcloud auth application-default login` (with `--impersonate-service-account=SERVICE_ACCOUNT` to act as the worker), or export GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json; on a GCE VM the metadata server provides them";

/// No usable credentials, and what was tried.
#[derive(Debug, thiserror::Error)]
pub enum NoCredentials {
    #[error(
        "no Google credentials: GOOGLE_APPLICATION_CREDENTIALS is not set, there is no gcloud file at {gcloud}, and {server} did not answer within {METADATA_TIMEOUT:?} ({why}). To fix: {WHAT_TO_DO}",
        gcloud = gcloud.as_ref().map_or_else(|| "~/.config/gcloud (HOME is not set)".to_string(), |p| p.display().to_string()),
        server = Source::MetadataServer(url.clone())
    )]
    MetadataServer {
        url: String,
        gcloud: Option<PathBuf>,
        why: String,
        #[source]
        source: Option<reqwest::Error>,
    },
    #[error(
        "GOOGLE_APPLICATION_CREDENTIALS={} names no readable file ({source}). To fix: {WHAT_TO_DO}",
        path.display()
    )]
    MissingFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Google credentials from {source_name} do not work ({detail}). To fix: {WHAT_TO_DO}")]
    Unusable {
        source_name: Source,
        detail: String,
        #[source]
        source: Option<google_cloud_auth::errors::CredentialsError>,
    },
}

/// The source Application Default Credentials will use, by the variables `lookup` gives.
pub fn source_from(lookup: impl Fn(&str) -> Option<OsString>) -> Source {
    if let Some(path) = lookup("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.is_empty()) {
        return Source::Variable(PathBuf::from(path));
    }
    if let Some(file) = gcloud_file(&lookup)
        && file.is_file()
    {
        return Source::Gcloud(file);
    }
    Source::MetadataServer(metadata_url(&lookup))
}

fn gcloud_file(lookup: &impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    lookup("HOME")
        .map(|home| PathBuf::from(home).join(".config/gcloud/application_default_credentials.json"))
}

fn metadata_url(lookup: &impl Fn(&str) -> Option<OsString>) -> String {
    match lookup("GCE_METADATA_HOST").and_then(|h| h.into_string().ok()) {
        Some(host) if !host.is_empty() => format!("http://{host}"),
        _ => METADATA_ROOT.to_string(),
    }
}

fn from_env(name: &str) -> Option<OsString> {
    std::env::var_os(name)
}

/// Asks the metadata server at `url` for a token, once.
async fn metadata_token(url: &str) -> Result<(), (String, Option<reqwest::Error>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(METADATA_TIMEOUT)
        .connect_timeout(METADATA_TIMEOUT)
        .build()
        .map_err(|e| (e.to_string(), Some(e)))?;
    let response = client
        .get(format!("{}{TOKEN_PATH}", url.trim_end_matches('/')))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .map_err(|e| {
            let why = if e.is_timeout() {
                "no answer".to_string()
            } else if e.is_connect() {
                "could not connect".to_string()
            } else {
                e.to_string()
            };
            (why, Some(e))
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err((
            format!("it answered HTTP {status} for a token: this machine has no service account"),
            None,
        ));
    }
    Ok(())
}

/// Checks that Application Default Credentials can give a token, within a few seconds, and
/// says where they come from. Only call it where a Google endpoint is used: stand-ins take
/// anonymous credentials.
pub async fn probe() -> Result<Source, NoCredentials> {
    probe_with(from_env).await
}

/// [`probe`] with the variables `lookup` gives (the credentials themselves are built from the
/// process environment, as Google's clients will build them).
pub async fn probe_with(
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<Source, NoCredentials> {
    let source = source_from(&lookup);
    match &source {
        Source::MetadataServer(url) => {
            return match metadata_token(url).await {
                Ok(()) => Ok(source),
                Err((why, error)) => Err(NoCredentials::MetadataServer {
                    url: url.clone(),
                    gcloud: gcloud_file(&lookup),
                    why,
                    source: error,
                }),
            };
        }
        Source::Variable(path) => {
            if let Err(e) = std::fs::metadata(path) {
                return Err(NoCredentials::MissingFile {
                    path: path.clone(),
                    source: e,
                });
            }
        }
        Source::Gcloud(_) => {}
    }
    let credentials = google_cloud_auth::credentials::Builder::default()
        .build()
        .map_err(|e| NoCredentials::Unusable {
            source_name: source.clone(),
            detail: e.to_string(),
            source: None,
        })?;
    match tokio::time::timeout(TOKEN_TIMEOUT, credentials.headers(Default::default())).await {
        Ok(Ok(CacheableResource::New { .. } | CacheableResource::NotModified)) => Ok(source),
        Ok(Err(e)) => Err(NoCredentials::Unusable {
            source_name: source.clone(),
            detail: e.to_string(),
            source: Some(e),
        }),
        Err(_) => Err(NoCredentials::Unusable {
            source_name: source,
            detail: format!("no token within {TOKEN_TIMEOUT:?}"),
            source: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> + use<> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn sources_follow_the_crates_order() {
        let home = tempfile::tempdir().unwrap();
        let home_str = home.path().to_str().unwrap();
        assert_eq!(
            source_from(vars(&[
                ("HOME", home_str),
                ("GCE_METADATA_HOST", "127.0.0.1:9")
            ])),
            Source::MetadataServer("http://127.0.0.1:9".into())
        );
        assert_eq!(
            source_from(vars(&[("HOME", home_str)])),
            Source::MetadataServer(METADATA_ROOT.into())
        );
        let file = home
            .path()
            .join(".config/gcloud/application_default_credentials.json");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "{}").unwrap();
        assert_eq!(
            source_from(vars(&[("HOME", home_str)])),
            Source::Gcloud(file)
        );
        assert_eq!(
            source_from(vars(&[
                ("HOME", home_str),
                ("GOOGLE_APPLICATION_CREDENTIALS", "/k.json")
            ])),
            Source::Variable("/k.json".into())
        );
    }

    #[tokio::test]
    async fn a_silent_metadata_server_is_refused_quickly_and_says_what_to_do() {
        let home = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let host = format!("127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let err = probe_with(vars(&[
            ("HOME", home.path().to_str().unwrap()),
            ("GCE_METADATA_HOST", &host),
        ]))
        .await
        .unwrap_err();
        assert!(started.elapsed() <= METADATA_TIMEOUT + Duration::from_secs(1));
        let text = err.to_string();
        for needed in [
            "gcloud auth application-default login",
            "--impersonate-service-account",
            "GOOGLE_APPLICATION_CREDENTIALS",
            &host,
        ] {
            assert!(text.contains(needed), "{needed} missing from: {text}");
        }
    }

    #[tokio::test]
    async fn a_metadata_server_that_gives_a_token_is_the_credential() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let home = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let n = socket.read(&mut request).await.unwrap();
            let request = String::from_utf8_lossy(&request[..n]).to_string();
            let body = r#"{"access_token":"t","expires_in":3600,"token_type":"Bearer"}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMetadata-Flavor: Google\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            request
        });
        let source = probe_with(vars(&[
            ("HOME", home.path().to_str().unwrap()),
            ("GCE_METADATA_HOST", &host),
        ]))
        .await
        .unwrap();
        assert_eq!(source, Source::MetadataServer(format!("http://{host}")));
        let request = server.await.unwrap();
        assert!(
            request.starts_with(&format!("GET {TOKEN_PATH} ")),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("metadata-flavor: google"),
            "{request}"
        );
    }
}
