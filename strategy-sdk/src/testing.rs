//! Helpers shared by the SDK's unit tests.

/// `actual` (a number, or an `Option` that must be `Some`) is within 1e-9 of
/// `expected`.
#[track_caller]
pub(crate) fn assert_close(actual: impl Into<Option<f64>>, expected: f64) {
    let actual = actual.into().expect("a value");
    assert!(
        (actual - expected).abs() < 1e-9,
        "expected {expected}, got {actual}"
    );
}
