"""onionstack's Pulumi policy pack (see __main__.py); a package so the tests can import it."""
