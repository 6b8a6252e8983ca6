//! CNI plugin library.
