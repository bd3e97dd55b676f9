//! End-to-end checks of the funnel on synthetic services: each filter fires where it must and
//! stays quiet where it must not.
