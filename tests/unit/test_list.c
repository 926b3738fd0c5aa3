/* list: the intrusive list's insertions, removal, iteration, and the one property sqs relies
 * on: an iteration whose saved next node is removed meanwhile still steps on from it. */
#include "testutil.h"

#include "dsw/list.h"

struct item {
    int v;
    struct dsw_list link;
};

static int values(struct dsw_list *h, int *out, int max)
{
    int n = 0;
    struct dsw_list *pos;
    dsw_list_foreach(pos, h)
    {
        if (n < max)
            out[n] = dsw_list_entry(pos, struct item, link)->v;
        n++;
    }
    return n;
}

static void test_order(void **state)
{
    struct dsw_list h;
    struct item it[4] = {{.v = 0}, {.v = 1}, {.v = 2}, {.v = 3}};
    int got[8];
    dsw_list_init(&h);
    assert_true(dsw_list_empty(&h));
    assert_int_equal(values(&h, got, 8), 0);
    dsw_list_push_back(&h, &it[1].link);
    dsw_list_push_back(&h, &it[2].link);
    dsw_list_push_front(&h, &it[0].link);
    dsw_list_push_back(&h, &it[3].link);
    assert_int_equal(values(&h, got, 8), 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(got[i], i);
    dsw_list_remove(&it[0].link); /* the head */
    dsw_list_remove(&it[3].link); /* the tail */
    assert_int_equal(values(&h, got, 8), 2);
    assert_int_equal(got[0], 1);
    assert_int_equal(got[1], 2);
    dsw_list_remove(&it[1].link);
    dsw_list_remove(&it[2].link);
    assert_true(dsw_list_empty(&h));
}

static void test_remove_while_iterating(void **state)
{
    struct dsw_list h, *pos, *tmp;
    struct item it[5];
    int seen = 0, got[8];
    dsw_list_init(&h);
    for (int i = 0; i < 5; i++) {
        it[i].v = i;
        dsw_list_push_back(&h, &it[i].link);
    }
    /* At item 1, remove itself and the next one (2): the iteration goes on at 3 through 2's
     * stale pointers, as sqs's cancel loop needs when a callback retires other calls. */
    dsw_list_foreach_safe(pos, tmp, &h)
    {
        struct item *x = dsw_list_entry(pos, struct item, link);
        seen |= 1 << x->v;
        if (x->v == 1) {
            dsw_list_remove(&it[1].link);
            dsw_list_remove(&it[2].link);
        }
    }
    assert_int_equal(seen, 0x1f); /* 0..4: the removed 2 too, reached through the saved pointer */
    assert_int_equal(values(&h, got, 8), 3);
    assert_int_equal(got[0], 0);
    assert_int_equal(got[1], 3);
    assert_int_equal(got[2], 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_remove_while_iterating),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
