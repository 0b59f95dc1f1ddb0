//! Property tests of configuration validation: for generated TOML
//! configurations mixing valid and invalid values, each section switched
//! on, off or left to its default, the stack is built exactly when every
//! value is in its documented range (whether or not its section is on),
//! and no hedge is cut short by the per-attempt timeout, and otherwise
//! the error names a section that holds a bad value (or the hedge's
//! delay). Nothing panics.

use proptest::prelude::*;
use tower::service_fn;
use tower_cql_core::{Collectors, CqlError, CqlRequest, CqlResponse, ErrorKind};
use tower_cql_middleware::stack_config::StackConfig;

/// One key of one section, its TOML text, and whether it is in range.
#[derive(Debug, Clone)]
struct Setting {
    section: &'static str,
    key: &'static str,
    toml: String,
    valid: bool,
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{v:?}")
    }
}

fn int(section: &'static str, key: &'static str, min: u64) -> impl Strategy<Value = Setting> {
    (0u64..4).prop_map(move |v| Setting {
        section,
        key,
        toml: v.to_string(),
        valid: v >= min,
    })
}

fn between(
    section: &'static str,
    key: &'static str,
    min: u64,
    max: u64,
) -> impl Strategy<Value = Setting> {
    (0u64..=max + 2).prop_map(move |v| Setting {
        section,
        key,
        toml: v.to_string(),
        valid: (min..=max).contains(&v),
    })
}

fn real(
    section: &'static str,
    key: &'static str,
    valid: fn(f64) -> bool,
) -> impl Strategy<Value = Setting> {
    prop::sample::select(vec![
        -1.0,
        0.0,
        0.05,
        0.5,
        1.0,
        1.5,
        999.0,
        1000.0,
        1001.0,
        1e9,
        2e9,
        f64::NAN,
        f64::INFINITY,
    ])
    .prop_map(move |v| Setting {
        section,
        key,
        toml: float(v),
        valid: valid(v),
    })
}

fn settings() -> impl Strategy<Value = Vec<Setting>> {
    let all = vec![
        int("retry", "max_attempts", 1).boxed(),
        real("retry", "budget_ratio", |r| r > 0.0 && r <= 1000.0).boxed(),
        real("hedge", "budget_ratio", |r| r > 0.0 && r <= 1000.0).boxed(),
        real("rate_limit", "rate_per_second", |r| {
            r.is_finite() && r > 0.0 && r <= 1e9
        })
        .boxed(),
        int("rate_limit", "burst", 1).boxed(),
        real("breaker", "failure_rate", |r| r > 0.0 && r <= 1.0).boxed(),
        int("breaker", "min_requests", 1).boxed(),
        int("breaker", "cool_down_ms", 1).boxed(),
        int("concurrency", "max_in_flight", 1).boxed(),
        // 0 means no limit here (documented), so every value is valid
        int("concurrency", "queue_timeout_ms", 0).boxed(),
        int("timeout", "per_attempt_ms", 1).boxed(),
        between("hedge", "max_speculative", 1, 4).boxed(),
        int("metrics", "max_label_sets", 1).boxed(),
    ];
    // each key present or not
    all.into_iter()
        .map(prop::option::of)
        .collect::<Vec<_>>()
        .prop_map(|v| v.into_iter().flatten().collect())
}

const SECTIONS: [&str; 7] = [
    "retry",
    "rate_limit",
    "breaker",
    "concurrency",
    "hedge",
    "timeout",
    "metrics",
];

/// Each section's `enabled`: absent (the section's default), true or
/// false.
fn switches() -> impl Strategy<Value = Vec<Option<bool>>> {
    prop::collection::vec(prop::option::of(any::<bool>()), SECTIONS.len())
}

fn toml(settings: &[Setting], switches: &[Option<bool>]) -> String {
    let mut out = String::new();
    for (section, enabled) in SECTIONS.into_iter().zip(switches) {
        let keys: Vec<_> = settings.iter().filter(|s| s.section == section).collect();
        if keys.is_empty() {
            continue;
        }
        out.push_str(&format!("[{section}]\n"));
        if let Some(on) = enabled {
            out.push_str(&format!("enabled = {on}\n"));
        }
        for s in keys {
            out.push_str(&format!("{} = {}\n", s.key, s.toml));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_stack_is_built_exactly_when_every_value_is_in_range(
        settings in settings(),
        switches in switches(),
    ) {
        let text = toml(&settings, &switches);
        let config = StackConfig::from_toml(&text).expect("well-formed TOML parses");
        let built = config
            .into_builder(Collectors::new())
            .and_then(|b| {
                b.layers()?;
                b.build(service_fn(|_: CqlRequest| async {
                    Err::<CqlResponse, _>(CqlError::new(ErrorKind::Other, "unused"))
                }))
            });
        let values_valid = settings.iter().all(|s| s.valid);
        // the rule across sections: a hedge that is on, under a
        // per-attempt timeout (on) no longer than its shortest delay (the
        // default percentile's `min`, 1 ms), would hedge nothing
        let switch = |section| switches[SECTIONS.iter().position(|s| *s == section).unwrap()];
        let hedge_on = switch("hedge") == Some(true)
            && settings.iter().any(|s| s.section == "hedge");
        let cut_short = hedge_on
            && switch("timeout") != Some(false)
            && settings
                .iter()
                .any(|s| s.key == "per_attempt_ms" && s.toml == "1");
        let valid = values_valid && !cut_short;
        match built {
            Ok(_) => prop_assert!(valid, "built with an invalid value:\n{text}"),
            Err(e) if values_valid => {
                prop_assert!(!valid, "refused a valid configuration: {e}\n{text}");
                prop_assert_eq!(e.field, "hedge.delay.min", "{}\n{}", e, text);
            }
            Err(e) => {
                prop_assert!(!valid, "refused a valid configuration: {e}\n{text}");
                let msg = e.to_string();
                prop_assert!(
                    settings
                        .iter()
                        .filter(|s| !s.valid)
                        .any(|s| msg.contains(&format!("{}.", s.section))),
                    "the error {msg:?} names no section with a bad value:\n{text}"
                );
            }
        }
    }

    #[test]
    fn arbitrary_text_is_refused_or_accepted_without_panicking(text in "\\PC{0,200}") {
        if let Ok(config) = StackConfig::from_toml(&text) {
            let _ = config.into_builder(Collectors::new());
        }
    }
}
