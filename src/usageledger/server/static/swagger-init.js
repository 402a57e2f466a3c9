// Starts the vendored Swagger UI on this collector's own OpenAPI document (a file, not an
// inline script, so the docs page's Content-Security-Policy can forbid inline scripts).
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});
