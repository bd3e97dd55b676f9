//! Running child commands.
