//! Link arguments of the macOS dylib, the same for the build on a Mac (`cargo xtask dist-macos`)
//! and the cross build from Linux (`cargo xtask dist-macos-cross`), whose linker driver is clang
//! too: the install name users load it by, no library it does not call (Rust's standard
//! library asks for libiconv), room in the header for the code signature's load command, and no
//! debug map (`-S`: its N_OSO entries name the object files in the build folder, and the
//! linker derives the image's LC_UUID from the output before cargo strips it, so the UUID would
//! differ from one build folder to another).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_VENDOR").as_deref() == Ok("apple") {
        for arg in [
            "-Wl,-install_name,/usr/local/lib/libcosmian_pkcs11.dylib",
            "-Wl,-dead_strip_dylibs",
            "-Wl,-headerpad_max_install_names",
            "-Wl,-S",
        ] {
            println!("cargo:rustc-cdylib-link-arg={arg}");
        }
    }
}
