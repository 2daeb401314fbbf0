// The OpenAPI 3 description of the HTTP API (src/http/openapi.json, embedded at build time).
#pragma once

#include <string_view>

namespace ka::http {
std::string_view openapi_json();
}
