/* buf: the hard cap holds for every append path. */
#include "testutil.h"

#include "dsw/buf.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static void test_append_and_cap(void **state)
{
    struct dsw_buf b;
    dsw_buf_init(&b, 8);
    assert_string_equal(dsw_buf_str(&b), "");
    assert_int_equal(dsw_buf_puts(&b, "abcd"), 0);
    assert_int_equal(dsw_buf_puts(&b, "efgh"), 0);
    assert_int_equal(dsw_buf_puts(&b, "i"), -E2BIG);
    assert_string_equal(dsw_buf_str(&b), "abcdefgh");
    dsw_buf_consume(&b, 3);
    assert_string_equal(dsw_buf_str(&b), "defgh");
    assert_int_equal(dsw_buf_printf(&b, "%d", 123), 0);
    assert_int_equal(dsw_buf_printf(&b, "%d", 1), -E2BIG);
    assert_string_equal(dsw_buf_str(&b), "defgh123");
    char *s = dsw_buf_take(&b);
    assert_string_equal(s, "defgh123");
    assert_int_equal(b.len, 0);
    free(s);
    dsw_buf_free(&b);
}

static void test_overflowing_length(void **state)
{
    struct dsw_buf b;
    dsw_buf_init(&b, 16);
    assert_int_equal(dsw_buf_append(&b, "x", SIZE_MAX), -E2BIG);
    assert_int_equal(b.len, 0);
    dsw_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_cap),
        cmocka_unit_test(test_overflowing_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
