//! Tells the integration tests which database servers they cannot reach, so that their tests
//! are reported as ignored (with the reason) instead of passing without touching a server.
//!
//! A server counts as missing when its admin URL variable is not set, unless
//! `REQUIRE_ALL_BACKENDS=1` asks for every server (then the tests run and fail loudly).

fn main() {
    let required = std::env::var("REQUIRE_ALL_BACKENDS").is_ok_and(|v| v == "1");
    println!("cargo::rerun-if-env-changed=REQUIRE_ALL_BACKENDS");
    for (var, cfg) in [
        ("DATABASE_URL_POSTGRES", "durable_no_postgres"),
        ("DATABASE_URL_MYSQL", "durable_no_mysql"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if !required && std::env::var_os(var).is_none() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
