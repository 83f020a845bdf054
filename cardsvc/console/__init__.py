"""The operators' web console (``/console/``) and the public fund-report page (``/public/``):
static files shipped in the package, served by the service itself."""
