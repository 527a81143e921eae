//! Arbitrary strings as URIs: parsing never panics, and an accepted path never climbs out.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| {
    if let Ok(u) = locus_core::LocusUri::parse(s) {
        assert!(!u.path.split('/').any(|seg| seg == ".." || seg == "."));
        let again = locus_core::LocusUri::parse(&u.to_string()).expect("display parses back");
        assert_eq!(again, u);
    }
});
