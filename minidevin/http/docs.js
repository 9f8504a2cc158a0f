// Starts Swagger UI on the server's own OpenAPI document (a file: the page allows no
// inline script). No validator badge: it would call a server elsewhere.
window.ui = SwaggerUIBundle({
  url: new URL("api/openapi.json", document.baseURI).href,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
});
