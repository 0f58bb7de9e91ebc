//! `linkcast healthcheck [URL]`: exits 0 when `URL` (default the admin listener's
//! `http://127.0.0.1:7090/healthz`) answers 2xx within the timeout, 1 otherwise — the probe of
//! the container image's `HEALTHCHECK` and of Kubernetes exec probes, so a slim image needs no
//! curl or wget. An admin listener that requires a key gets `--api-key` (or
//! `LINKCAST_ADMIN_KEY`) as a Bearer token.

use std::time::Duration;

use crate::client::http::HttpApi;

/// `linkcast healthcheck` flags.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    /// What to ask: `http://HOST:PORT/PATH`.
    #[arg(default_value = "http://127.0.0.1:7090/healthz")]
    pub url: String,
    /// API key with the `admin` scope, if the admin listener requires one.
    #[arg(long, env = "LINKCAST_ADMIN_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Asks once; `Ok` on a 2xx answer.
pub fn run_cli(args: HealthcheckArgs) -> Result<(), Box<dyn std::error::Error>> {
    let (base, path) = split_url(&args.url).ok_or_else(|| format!("bad URL {:?} (want http://HOST:PORT/PATH)", args.url))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut api = HttpApi::new(base, args.api_key.filter(|k| !k.is_empty()))?;
        match tokio::time::timeout(Duration::from_millis(args.timeout_ms), api.get(path)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("{}: {e}", args.url).into()),
            Err(_) => Err(format!("{}: no answer within {} ms", args.url, args.timeout_ms).into()),
        }
    })
}

/// `http://host:port/path?q` → (`http://host:port`, `/path?q`).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let scheme_end = url.find("://")? + 3;
    match url[scheme_end..].find('/') {
        Some(slash) => Some((&url[..scheme_end + slash], &url[scheme_end + slash..])),
        None => Some((url, "/")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_split_into_base_and_path() {
        assert_eq!(super::split_url("http://127.0.0.1:7090/healthz"), Some(("http://127.0.0.1:7090", "/healthz")));
        assert_eq!(super::split_url("http://h:1"), Some(("http://h:1", "/")));
        assert_eq!(super::split_url("h:1/x"), None);
    }
}
