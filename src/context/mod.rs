//! The build context: `.dockerignore` matching with Docker's rules and the filtered walk.
