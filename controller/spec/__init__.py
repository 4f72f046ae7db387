"""The user's language, pure: kinds, documents, schemas, rules, loader, trees, units."""
