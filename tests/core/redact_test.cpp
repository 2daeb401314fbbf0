#include "core/redact.h"

#include <gtest/gtest.h>

namespace ka {
namespace {

TEST(Redact, MasksUriPassword) {
    EXPECT_EQ(redact("postgres://app:s3cret@db.example.com:5432/ka?sslmode=require"),
              "postgres://app:***@db.example.com:5432/ka?sslmode=require");
    EXPECT_EQ(redact("error at postgresql://u:p%40ss@h/db: refused"),
              "error at postgresql://u:***@h/db: refused");
}

TEST(Redact, PasswordContainingAtSign) {
    EXPECT_EQ(redact("postgres://app:a@b@host/db"), "postgres://app:***@host/db");
}

TEST(Redact, LeavesUriWithoutPasswordAlone) {
    EXPECT_EQ(redact("postgres://app@host:5432/db"), "postgres://app@host:5432/db");
    EXPECT_EQ(redact("see https://example.com/docs"), "see https://example.com/docs");
}

TEST(Redact, MasksKeywordAndQueryPasswords) {
    EXPECT_EQ(redact("host=db user=app password=hunter2 dbname=ka"),
              "host=db user=app password=*** dbname=ka");
    EXPECT_EQ(redact("password = 'it''s a secret' sslmode=require"),
              "password = *** sslmode=require");
    EXPECT_EQ(redact("postgres://h/db?user=a&password=xyz&sslmode=require"),
              "postgres://h/db?user=a&password=***&sslmode=require");
    EXPECT_EQ(redact("PASSWORD=abc"), "PASSWORD=***");
    EXPECT_EQ(redact("password='it\\'s secret' user=u"), "password=*** user=u");
}

TEST(Redact, DoesNotTouchOtherWords) {
    EXPECT_EQ(redact("password authentication failed for user \"app\""),
              "password authentication failed for user \"app\"");
    EXPECT_EQ(redact("no_password=1"), "no_password=1");
}

TEST(Redact, RegisteredSecretsAreMasked) {
    register_secret("sk-test-0123456789abcdef");
    register_secret("short");  // too short to mask safely
    EXPECT_EQ(redact("key sk-test-0123456789abcdef used twice: sk-test-0123456789abcdef"),
              "key *** used twice: ***");
    EXPECT_EQ(redact("a short text"), "a short text");
}

}  // namespace
}  // namespace ka
