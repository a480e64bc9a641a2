"""CI helpers and the IAM policies of the CI roles (docs/operations.md, "CI/CD")."""
