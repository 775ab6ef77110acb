"""The REST API: schemas, dependencies and one router per resource (api/routes/)."""
