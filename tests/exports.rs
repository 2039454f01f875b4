//! The built library exports exactly the three PKCS#11 entry points, and OpenSSH 9.4+'s check
//! (the file must contain the string `C_GetFunctionList`) passes.

use cosmian_pkcs11_testbed::provider_lib;

#[test]
fn exports_only_the_three_pkcs11_symbols() {
    let lib = provider_lib();
    let out =
        std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm (binutils)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    symbols.sort();
    assert_eq!(symbols, ["C_GetFunctionList", "C_GetInterface", "C_GetInterfaceList"], "{}", lib.display());
    let bytes = std::fs::read(&lib).unwrap();
    assert!(bytes.windows(17).any(|w| w == b"C_GetFunctionList"));
}
