// Records the target triple so plugins and host can compare theirs.
fn main() {
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    println!("cargo:rustc-env=TERN_PLUGIN_TARGET={target}");
}
