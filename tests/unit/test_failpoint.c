/* failpoint: specifications parse, counters select the hit, fail reports -EIO, abort and kill
 * end the process (checked in a forked child). */
#include "testutil.h"

#include "dsw/failpoint.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void test_parse(void **state)
{
    assert_int_equal(dsw_failpoint_setup("a=fail,b=sleep:5,c=abort@2,d=kill%3"), 0);
    assert_int_equal(dsw_failpoint_setup(""), 0);
    assert_int_equal(dsw_failpoint_setup(NULL), 0);
    const char *bad[] = {
        "a",        "=fail",     "a=explode", "a=sleep:x",
        "a=fail@0", "a=fail%-1", "a=sleep:",  "toolongnametoolongnametoolongname=fail"};
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++)
        assert_int_equal(dsw_failpoint_setup(bad[i]), -EINVAL);
    /* A malformed specification arms nothing. */
    assert_int_equal(dsw_failpoint_hit("a"), 0);
}

static void test_fail_counters(void **state)
{
    assert_int_equal(dsw_failpoint_setup("x=fail@2,y=fail%3,z=sleep:1"), 0);
    assert_int_equal(dsw_failpoint_hit("x"), 0);
    assert_int_equal(dsw_failpoint_hit("x"), -EIO);
    assert_int_equal(dsw_failpoint_hit("x"), 0);
    int fired = 0;
    for (int i = 0; i < 9; i++)
        fired += dsw_failpoint_hit("y") == -EIO;
    assert_int_equal(fired, 3);
    assert_int_equal(dsw_failpoint_hit("z"), 0);
    assert_int_equal(dsw_failpoint_hit("unarmed"), 0);
}

static int status_of_child(const char *spec)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (dsw_failpoint_setup(spec))
            _exit(2);
        dsw_failpoint_hit("p");
        _exit(0);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static void test_abort_and_kill(void **state)
{
    int st = status_of_child("p=kill");
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    st = status_of_child("p=abort");
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    st = status_of_child("q=abort");
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_fail_counters),
        cmocka_unit_test(test_abort_and_kill),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
