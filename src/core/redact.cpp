#include "core/redact.h"

#include <algorithm>
#include <cctype>
#include <mutex>
#include <vector>

namespace ka {
namespace {

std::mutex secrets_mutex;
std::vector<std::string>& secrets() {
    static std::vector<std::string> all;
    return all;
}

bool is_uri_end(char c) {
    return std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\'' || c == '/' ||
           c == '?' || c == '#';
}

// scheme://user:secret@host -> scheme://user:***@host
std::string mask_uri_userinfo(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    std::size_t pos = 0;
    while (true) {
        std::size_t sep = text.find("://", pos);
        if (sep == std::string_view::npos) break;
        std::size_t start = sep + 3;
        std::size_t end = start;
        while (end < text.size() && !is_uri_end(text[end])) ++end;
        // The userinfo ends at the last '@' of the authority (passwords may contain '@').
        std::string_view authority = text.substr(start, end - start);
        std::size_t at = authority.rfind('@');
        std::size_t colon = at == std::string_view::npos ? at : authority.find(':');
        out.append(text.substr(pos, start - pos));
        if (colon != std::string_view::npos && colon < at) {
            out.append(authority.substr(0, colon + 1));
            out.append(kRedacted);
            out.append(authority.substr(at));
        } else {
            out.append(authority);
        }
        pos = end;
    }
    out.append(text.substr(pos));
    return out;
}

// password=secret, password = 'se cret', ?password=secret&... -> password=***
std::string mask_password_pairs(std::string_view text) {
    static constexpr std::string_view kKey = "password";
    std::string out;
    std::size_t pos = 0;
    std::size_t i = 0;
    while (i + kKey.size() <= text.size()) {
        bool match = std::equal(
            kKey.begin(), kKey.end(), text.begin() + static_cast<long>(i),
            [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); });
        bool word_start = i == 0 || !(std::isalnum(static_cast<unsigned char>(text[i - 1])) ||
                                      text[i - 1] == '_');
        if (!match || !word_start) {
            ++i;
            continue;
        }
        std::size_t j = i + kKey.size();
        while (j < text.size() && text[j] == ' ') ++j;
        if (j >= text.size() || text[j] != '=') {
            i = j;
            continue;
        }
        ++j;
        while (j < text.size() && text[j] == ' ') ++j;
        std::size_t value_end = j;
        if (j < text.size() && text[j] == '\'') {
            value_end = j + 1;
            // Quoted value: backslash escapes (conninfo) and doubled quotes (SQL) both continue it.
            while (value_end < text.size()) {
                if (text[value_end] == '\\') {
                    value_end += 2;
                } else if (text[value_end] == '\'') {
                    if (value_end + 1 < text.size() && text[value_end + 1] == '\'') {
                        value_end += 2;
                    } else {
                        break;
                    }
                } else {
                    ++value_end;
                }
            }
            value_end = std::min(value_end + 1, text.size());
        } else {
            while (value_end < text.size() &&
                   !std::isspace(static_cast<unsigned char>(text[value_end])) &&
                   text[value_end] != '&' && text[value_end] != '"')
                ++value_end;
        }
        out.append(text.substr(pos, j - pos));
        out.append(kRedacted);
        pos = i = value_end;
    }
    out.append(text.substr(pos));
    return out;
}

}  // namespace

std::string redact(std::string_view text) {
    std::string out = mask_password_pairs(mask_uri_userinfo(text));
    std::lock_guard lock(secrets_mutex);
    for (const auto& secret : secrets()) {
        for (std::size_t at = out.find(secret); at != std::string::npos;
             at = out.find(secret, at + kRedacted.size())) {
            out.replace(at, secret.size(), kRedacted);
        }
    }
    return out;
}

void register_secret(std::string secret) {
    if (secret.size() < kMinSecretLength) return;
    std::lock_guard lock(secrets_mutex);
    if (std::find(secrets().begin(), secrets().end(), secret) == secrets().end()) {
        secrets().push_back(std::move(secret));
    }
}

}  // namespace ka
