//! Headers in clear text: an `http://` endpoint on another host would
//! carry them (usually API keys) readable by anyone on the way, so
//! `install()` refuses that unless allowed explicitly.

use http::Uri;

use super::config::{ENV_HEADERS, Resolved, Signal};
use super::error::{Origin, OtlpError};

/// Refuses headers that would cross the network in clear text: for each
/// signal, any header (ours, or one `opentelemetry-otlp` reads from
/// `process_env` itself: the signal's header variable, else
/// `OTEL_EXPORTER_OTLP_HEADERS`) with a plain `http://` URL on a host that
/// is not loopback, unless `allowed`. (`https://` is refused earlier: there
/// is no TLS.)
pub(crate) fn refuse_headers_in_clear(
    cfg: &Resolved,
    allowed: bool,
    process_env: impl Fn(&str) -> Option<String>,
) -> Result<(), OtlpError> {
    for signal in [Signal::Traces, Signal::Metrics] {
        let target = cfg.target(signal);
        if allowed || is_loopback_endpoint(&target.url) {
            continue;
        }
        let [_, headers_var, _] = signal.vars();
        let origin = target.headers.first().map(|h| h.origin).or_else(|| {
            [headers_var, ENV_HEADERS]
                .into_iter()
                .find(|var| process_env(var).is_some_and(|v| !v.trim().is_empty()))
                .map(Origin::Env)
        });
        if let Some(origin) = origin {
            return Err(OtlpError::InsecureHeaders {
                endpoint: target.url.clone(),
                origin,
            });
        }
    }
    Ok(())
}

/// Whether a validated endpoint's host is this machine: `localhost`, an
/// address in 127.0.0.0/8, or `::1` (also written as `::ffff:127.x.y.z`).
/// Anything else, a name that might resolve to loopback included, is not.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    let Some(host) = endpoint
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
    else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::config::{ENV_ENDPOINT, Env, Explicit, resolve};

    fn env(vars: &[(&str, &str)]) -> Env {
        Env::from_lookup(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    fn resolved(endpoint: &str, headers: &[(&str, &str)]) -> Resolved {
        let x = Explicit {
            endpoint: Some(endpoint.into()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Explicit::default()
        };
        resolve(&env(&[]), &x).unwrap()
    }

    #[test]
    fn loopback_endpoints() {
        for e in [
            "http://127.0.0.1:4317",
            "http://127.9.8.7:4318/otlp",
            "http://localhost:4317",
            "http://LocalHost",
            "http://[::1]:4317",
            "http://[::ffff:127.0.0.1]:4317",
        ] {
            assert!(is_loopback_endpoint(e), "{e}");
        }
        for e in [
            "http://10.0.0.1:4317",
            "http://0.0.0.0:4317",
            "http://[::]:4317",
            "http://collector:4317",
            "http://localhost.example.com:4317",
            "http://127.0.0.1.nip.io:4317",
            "http://[::ffff:10.0.0.1]:4317",
            "http://[fe80::1]:4317",
        ] {
            assert!(!is_loopback_endpoint(e), "{e}");
        }
    }

    #[test]
    fn headers_in_clear_to_another_host_are_refused_unless_allowed() {
        let secret = "sk-very-secret-0123";
        let no_process_env = |_: &str| None;
        let remote = resolved("http://collector.internal:4317", &[("api-key", secret)]);
        let err = refuse_headers_in_clear(&remote, false, no_process_env).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("(from OtlpExporterBuilder::header)")
                && msg.contains("\"http://collector.internal:4317\"")
                && msg.contains("allow_insecure_headers(true)")
                && msg.contains("http://127.0.0.1:4317"),
            "{msg}"
        );
        assert!(!msg.contains(secret) && !format!("{err:?}").contains(secret));
        refuse_headers_in_clear(&remote, true, no_process_env).expect("allowed explicitly");
        // loopback, or no header at all: nothing to refuse
        for local in [
            "http://127.0.0.1:4317",
            "http://localhost:4318",
            "http://[::1]:4317",
        ] {
            let r = resolved(local, &[("api-key", secret)]);
            refuse_headers_in_clear(&r, false, no_process_env).expect(local);
        }
        let bare = resolved("http://collector.internal:4317", &[]);
        refuse_headers_in_clear(&bare, false, no_process_env).unwrap();
        // headers the SDK reads from the process environment by itself
        for var in [
            ENV_HEADERS,
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
        ] {
            let process_env = |k: &str| (k == var).then(|| "api-key=x".to_string());
            let err = refuse_headers_in_clear(&bare, false, process_env).unwrap_err();
            assert!(err.to_string().contains(&format!("(from {var})")), "{err}");
            refuse_headers_in_clear(&bare, true, process_env).unwrap();
        }
        // from OTEL_EXPORTER_OTLP_HEADERS given to the builder
        let r = resolve(
            &env(&[
                (ENV_ENDPOINT, "http://10.1.2.3:4317"),
                (ENV_HEADERS, "api-key=abc"),
            ]),
            &Explicit::default(),
        )
        .unwrap();
        let err = refuse_headers_in_clear(&r, false, no_process_env).unwrap_err();
        assert!(
            err.to_string()
                .contains("(from OTEL_EXPORTER_OTLP_HEADERS)"),
            "{err}"
        );
    }
}
