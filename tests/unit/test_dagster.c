/* Unit tests of the dagster module: the writer against Python's own json.dumps output (literals
 * generated with CPython 3) and against every row of the golden vectors that real Dagster
 * wrote: event_logs_*.json, runs_rows_all.json, execute_run_argv.json and the stdout lines. */
#include "testutil.h"

#include "dsw/dagster.h"
#include "dsw/msg.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* repr(float) for a spread of values: edges of the fixed/exponent switch, timestamps from the
 * vectors, random doubles and random bit patterns (generated with CPython's repr). */
static const struct {
    double v;
    const char *repr;
} floats[] = {
    {0x0.0p+0, "0.0"},
    {-0x0p+0, "-0.0"},
    {0x1.0000000000000p+0, "1.0"},
    {-0x1.8000000000000p+0, "-1.5"},
    {0x1.999999999999ap-4, "0.1"},
    {0x1.3333333333334p-2, "0.30000000000000004"},
    {0x1.1c37937e08000p+53, "1e+16"},
    {0x1.c6bf526340000p+49, "1000000000000000.0"},
    {0x1.18b54f22aeb00p+50, "1234567890123456.0"},
    {0x1.5ee2a2eb5a5c4p+53, "1.2345678901234568e+16"},
    {0x1.a36e2eb1c432dp-14, "0.0001"},
    {0x1.4f8b588e368f1p-17, "1e-05"},
    {0x1.f75104d551d69p-17, "1.5e-05"},
    {0x1.56e1fc2f8f359p-997, "1e-300"},
    {0x0.0000000000001p-1022, "5e-324"},
    {0x1.fffffffffffffp+1023, "1.7976931348623157e+308"},
    {0x1.0000000000000p+53, "9007199254740992.0"},
    {0x1.edd2f1a9fbe77p+6, "123.456"},
    {0x1.9967d96000000p+30, "1717171800.0"},
    {0x1.ac23d421be482p+30, "1795749128.435822"},
    {0x1.ac23d46badcefp+30, "1795749146.9197347"},
    {0x1.ac23d41640aeap+30, "1795749125.5631661"},
    {0x1.a87d9fd363c00p+4, "26.530669999829115"},
    {0x1.0f0cf064dd592p+73, "1e+22"},
    {0x1.52d02c7e14af6p+76, "1e+23"},
    {0x1.9000000000000p+6, "100.0"},
    {0x1.a36e2eb1c432dp-14, "0.0001"},
    {0x1.437c5692b3cc5p-10, "0.001234"},
    {0x1.4000000000000p+1, "2.5"},
    {0x1.8000000000000p+2, "6.0"},
    {0x0.0000000000003p-1022, "1.5e-323"},
    {0x1.94a1ce15ccbf6p+30, "1697149829.4499488"},
    {0x1.88426180b59b6p+30, "1645254752.1773505"},
    {0x1.ac073757a5d7dp+30, "1795280341.911956"},
    {0x1.82a699180044ep+30, "1621730886.0002627"},
    {0x1.a3cc8ae52b03dp+30, "1760764601.2920067"},
    {0x1.97a036cc4b8bep+30, "1709706675.0737758"},
    {0x1.819e3df5baca4p+30, "1617399677.4324121"},
    {0x1.a1c3acffd3ca4p+30, "1752230719.9568262"},
    {0x1.8026d0e62160bp+30, "1611248697.5325954"},
    {0x1.9c7c8a246515cp+30, "1730093705.0987158"},
    {0x1.8277574c4a1f8p+30, "1620956627.0723858"},
    {0x1.83f54140033c4p+30, "1627213904.0031595"},
    {0x1.9bd56db2f8949p+30, "1727355756.7427542"},
    {0x1.b89c5d559b400p+30, "1848055637.4016113"},
    {0x1.865321b1612bdp+30, "1637140588.3448937"},
    {0x1.8d6fe0a587466p+30, "1666971689.3821044"},
    {0x1.aa58e53ae2ff4p+30, "1788229966.7216768"},
    {0x1.c14151aaf2cacp+30, "1884312682.7371016"},
    {0x1.a6bf5212574bbp+30, "1773130884.5852497"},
    {0x1.99d7afb994b84p+30, "1719004142.395234"},
    {0x1.c34c03ceb6252p+30, "1892876531.677876"},
    {0x1.80cd3450bdc65p+30, "1613974804.1853268"},
    {0x1.badf46e6dbc12p+30, "1857540537.714604"},
    {0x1.922f278799174p+30, "1686882785.8995028"},
    {0x1.87c9a3b40767ap+30, "1643276525.0072312"},
    {0x1.85e5171db1accp+30, "1635337671.4235106"},
    {0x1.9388b88cec1d4p+30, "1692544547.2305803"},
    {0x1.b7d7f84ef1ac7p+30, "1844837907.7360094"},
    {0x1.8a6572e7e8a23p+30, "1654217913.9771812"},
    {0x1.a711aac4651c1p+30, "1774480049.0987399"},
    {0x1.ab2b1ae2b61fbp+30, "1791674040.6778553"},
    {0x1.981b0d7b45584p+30, "1711719262.8177195"},
    {0x1.a4a5c02ed9f9ep+30, "1764323339.7128673"},
    {0x1.81f5f351f7ce1p+30, "1618836692.491997"},
    {0x1.81bb947bf5a07p+30, "1617880350.9898698"},
    {0x1.8c3377776218ep+30, "1661787613.845798"},
    {0x1.ae22bedfd171dp+30, "1804119991.9545357"},
    {0x1.9c0db2eecda40p+30, "1728277691.700821"},
    {0x1.93f074dc73c01p+30, "1694244151.1130373"},
    {0x1.a75a353c358bfp+30, "1775668559.0522916"},
    {0x1.854ac7403e430p-283, "9.784685148600378e-86"},
    {0x1.c713b4cbd87adp-515, "1.6572847446224619e-155"},
    {0x1.298cdcb5c7427p-655, "7.774512814278136e-198"},
    {0x1.17510b2f14c94p+574, "6.746433701513364e+172"},
    {0x1.a399f3e7d1bfbp-856, "3.4113057952571406e-258"},
    {0x1.e902a930d6eafp-409, "1.4448072041692208e-123"},
    {0x1.ff90386734721p-10, "0.0019514593530413698"},
    {0x1.702e6e00902c7p-320, "6.733226544696025e-97"},
    {0x1.3661dbabced20p-104, "5.977744852071831e-32"},
    {0x1.25e7e49b64a08p+224, "3.095189670436478e+67"},
    {0x1.ea567faecbd38p-874, "1.520685043517206e-263"},
    {0x1.703de1e398f10p+25, "48266179.7781049"},
    {0x1.d7a6a6b0a18e8p-686, "5.738570894011246e-207"},
    {0x1.87c17c1d3fcffp-323, "8.955438799136765e-98"},
    {0x1.565f126e87555p+888, "2.75990181011815e+267"},
    {0x1.a36347d2caf82p-160, "1.1209249509414568e-48"},
    {0x1.370fa0a097c97p+947, "1.4454782283743635e+285"},
    {0x1.f77c3ab1031d0p-865, "7.99467024469629e-261"},
    {0x1.f06bdc3baea9ep+119, "1.2887834541636946e+36"},
    {0x1.109af92b1d3f2p+593, "3.452088025474884e+178"},
    {0x1.5e30ed8ceaec4p+6, "87.54778118308883"},
    {0x1.541f5320e973ap+8, "340.1223621911955"},
    {0x1.6245a5530cd8ep+32, "5943698771.050184"},
    {0x1.abd3ffcabab61p-21, "7.968919758215943e-07"},
    {0x1.ae1041c5fd7a0p-1, "0.8399677805125414"},
    {0x1.13f628505d1c7p+42, "4740983374196.444"},
    {0x1.d8efe3b427f6bp+45, "64999975716094.836"},
    {0x1.46a85d9070d91p+39, "701492021304.424"},
    {0x1.5068b30f5a4b9p+42, "5779462307177.181"},
    {0x1.07041419d35c8p+3, "8.219247866097149"},
};

/* json.dumps(event, sort_keys=True) of rows 105 and 121 of
 * event_logs_crash_then_redelivered.json, as CPython writes them. */
static const char row105[] =
    "{\"__class__\": \"EventLogEntry\", \"dagster_event\": {\"__class__\": \"DagsterEvent"
    "\", \"event_specific_data\": {\"__class__\": \"EngineEventData\", \"error\": null, \""
    "marker_end\": null, \"marker_start\": null, \"metadata_entries\": [{\"__class__\": \""
    "EventMetadataEntry\", \"description\": null, \"entry_data\": {\"__class__\": \"TextM"
    "etadataEntryData\", \"text\": \"6982\"}, \"label\": \"pid\"}]}, \"event_type_value\""
    ": \"ENGINE_EVENT\", \"logging_tags\": {}, \"message\": \"Started process for run (pi"
    "d: 6982).\", \"pid\": null, \"pipeline_name\": \"crash_job\", \"solid_handle\": null"
    ", \"step_handle\": null, \"step_key\": null, \"step_kind_value\": null}, \"error_inf"
    "o\": null, \"level\": 20, \"message\": \"\", \"pipeline_name\": \"crash_job\", \"run"
    "_id\": \"00000000-0000-4000-8000-000000000005\", \"step_key\": null, \"timestamp\": "
    "1795749146.858187, \"user_message\": \"\"}";

static const char row121[] =
    "{\"__class__\": \"EventLogEntry\", \"dagster_event\": {\"__class__\": \"DagsterEvent"
    "\", \"event_specific_data\": null, \"event_type_value\": \"PIPELINE_FAILURE\", \"log"
    "ging_tags\": {}, \"message\": \"This run has been marked as failed from outside the "
    "execution context.\", \"pid\": null, \"pipeline_name\": \"crash_job\", \"solid_handl"
    "e\": null, \"step_handle\": null, \"step_key\": null, \"step_kind_value\": null}, \""
    "error_info\": null, \"level\": 40, \"message\": \"\", \"pipeline_name\": \"crash_job"
    "\", \"run_id\": \"00000000-0000-4000-8000-000000000005\", \"step_key\": null, \"time"
    "stamp\": 1795749147.8786237, \"user_message\": \"\"}";

static json_t *load_vec(const char *name)
{
    char *path = tu_vector_path(name);
    json_error_t err;
    json_t *v = json_load_file(path, JSON_ALLOW_NUL, &err);
    if (!v)
        fail_msg("%s: %s", path, err.text);
    free(path);
    return v;
}

/* A jansson value in Dagster's form, through the module's own writer. */
static char *dagster_form(const json_t *v, int sort)
{
    char *text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT), *out = NULL;
    assert_non_null(text);
    assert_int_equal(dsw_dagster_json_normalize(text, sort, &out), 0);
    free(text);
    return out;
}

static const char *str_of(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Every object in the text has its keys sorted (parsing keeps the written order). */
static void assert_sorted_keys(const json_t *v)
{
    const char *k, *prev = NULL;
    json_t *m;
    size_t i;
    if (json_is_array(v))
        json_array_foreach(v, i, m) assert_sorted_keys(m);
    if (!json_is_object(v))
        return;
    json_object_foreach((json_t *)v, k, m)
    {
        if (prev)
            assert_true(strcmp(prev, k) < 0);
        prev = k;
        assert_sorted_keys(m);
    }
}

/* Byte equality with the vector's form, and structural equality as a second opinion. */
static void assert_same_event(const char *mine, const json_t *want)
{
    char *expect = dagster_form(want, 1);
    json_t *parsed = json_loads(mine, 0, NULL);
    assert_non_null(parsed);
    assert_true(json_equal(parsed, want));
    assert_sorted_keys(parsed);
    assert_string_equal(mine, expect);
    json_decref(parsed);
    free(expect);
}

/* fn for the "event" of every row of each vector file, in order. */
static void each_event(const char *const *files, size_t n, void (*fn)(const json_t *ev, void *arg),
                       void *arg)
{
    for (size_t f = 0; f < n; f++) {
        json_t *rows = load_vec(files[f]), *row;
        size_t i;
        json_array_foreach(rows, i, row) fn(json_object_get(row, "event"), arg);
        json_decref(rows);
    }
}

static void test_float_repr(void **state)
{
    char out[32];
    for (size_t i = 0; i < DSW_ARRAY_LEN(floats); i++) {
        assert_int_equal(dsw_dagster_float_repr(floats[i].v, out), 0);
        assert_string_equal(out, floats[i].repr);
    }
    assert_int_equal(dsw_dagster_float_repr(0.0 / 0.0, out), -EINVAL);
    assert_int_equal(dsw_dagster_float_repr(1.0 / 0.0, out), -EINVAL);
}

static void test_string_escapes(void **state)
{
    /* json.dumps of the same text: lowercase hex, surrogate pairs, DEL escaped, '/' kept. */
    const char *in = "[\"a\xc3\xa9\xe2\x98\x83\xf0\x9f\x98\x80\\u007f\\u0001\\u001f\\\"\\\\/"
                     "\\n\\r\\t\\b\\f~ \\u0000\", 1, -2, 3.0, true, false, null, {}, []]";
    const char *want = "[\"a\\u00e9\\u2603\\ud83d\\ude00\\u007f\\u0001\\u001f\\\"\\\\/"
                       "\\n\\r\\t\\b\\f~ \\u0000\", 1, -2, 3.0, true, false, null, {}, []]";
    char *out = NULL;
    assert_int_equal(dsw_dagster_json_normalize(in, 1, &out), 0);
    assert_string_equal(out, want);
    free(out);
    assert_int_equal(dsw_dagster_json_normalize("{\"a\": 1, \"a\": 2}", 1, &out), -EINVAL);
    assert_null(out);
    assert_int_equal(dsw_dagster_json_normalize("{", 1, &out), -EINVAL);
    assert_int_equal(dsw_dagster_json_normalize("[123456789012345678901234567890]", 1, &out),
                     -EINVAL);
}

/* The writer reproduces CPython's bytes for two vector rows: it is fit to be the oracle below. */
static void test_writer_matches_python(void **state)
{
    json_t *rows = load_vec("event_logs_crash_then_redelivered.json"), *row;
    size_t i, seen = 0;
    json_array_foreach(rows, i, row)
    {
        json_int_t id = json_integer_value(json_object_get(row, "id"));
        if (id != 105 && id != 121)
            continue;
        char *mine = dagster_form(json_object_get(row, "event"), 1);
        assert_string_equal(mine, id == 105 ? row105 : row121);
        free(mine);
        seen++;
    }
    assert_int_equal(seen, 2);
    json_decref(rows);
}

struct outside_seen {
    size_t engine, failure;
};

static void outside_event(const json_t *ev, void *arg)
{
    struct outside_seen *seen = arg;
    const json_t *de = json_object_get(ev, "dagster_event");
    const char *type = str_of(de, "event_type_value");
    double ts = json_real_value(json_object_get(ev, "timestamp"));
    char *mine = NULL;
    if (!de || !json_is_null(json_object_get(de, "pid")))
        return;
    if (dsw_streq(type, "ENGINE_EVENT")) {
        const json_t *entries =
            json_object_get(json_object_get(de, "event_specific_data"), "metadata_entries");
        struct dsw_kv meta[8];
        size_t n = json_array_size(entries);
        assert_true(n <= 8);
        for (size_t k = 0; k < n; k++) {
            const json_t *e = json_array_get(entries, k);
            meta[k].key = str_of(e, "label");
            meta[k].value = str_of(json_object_get(e, "entry_data"), "text");
        }
        mine = dsw_dagster_engine_event(str_of(ev, "run_id"), str_of(ev, "pipeline_name"),
                                        str_of(de, "message"), meta, n, -1, ts);
        seen->engine++;
    } else if (dsw_streq(type, "PIPELINE_FAILURE")) {
        mine = dsw_dagster_run_event(str_of(ev, "run_id"), str_of(ev, "pipeline_name"), type,
                                     str_of(de, "message"), -1, ts);
        seen->failure++;
    } else {
        return;
    }
    assert_non_null(mine);
    assert_same_event(mine, ev);
    free(mine);
}

/* The ENGINE_EVENT and PIPELINE_FAILURE rows written from outside the run (pid null). */
static void test_outside_events_vs_crash_then_redelivered(void **state)
{
    static const char *const files[] = {"event_logs_crash_then_redelivered.json"};
    struct outside_seen seen = {0, 0};
    each_event(files, 1, outside_event, &seen);
    /* started (the crash writes no exit); started, notice, exited */
    assert_int_equal(seen.engine, 4);
    assert_int_equal(seen.failure, 1);
}

static void run_level_event(const json_t *ev, void *arg)
{
    const json_t *de = json_object_get(ev, "dagster_event");
    const char *type = str_of(de, "event_type_value");
    if (!type || strncmp(type, "PIPELINE_", 9) != 0 || !json_is_null(json_object_get(de, "pid")))
        return;
    char *mine = dsw_dagster_run_event(str_of(ev, "run_id"), str_of(ev, "pipeline_name"), type,
                                       str_of(de, "message"), -1,
                                       json_real_value(json_object_get(ev, "timestamp")));
    assert_non_null(mine);
    assert_same_event(mine, ev);
    free(mine);
    (*(size_t *)arg)++;
}

/* Run-level events from outside in the other scenarios: PIPELINE_STARTING (message null),
 * PIPELINE_ENQUEUED, PIPELINE_FAILURE. */
static void test_run_events_all_vectors(void **state)
{
    static const char *const files[] = {"event_logs_starting.json", "event_logs_queued.json",
                                        "event_logs_concurrent_duplicate.json"};
    size_t seen = 0;
    each_event(files, DSW_ARRAY_LEN(files), run_level_event, &seen);
    assert_true(seen >= 4);
}

/* Fill ev from a vector's EventLogEntry; 0 when the general writer cannot express it (a step
 * event written without from_step's members, e.g. STEP_WORKER_STARTED). The caller frees
 * *specific. */
static int event_from_vector(const json_t *e, struct dsw_dagster_event *ev, char **specific)
{
    const json_t *de = json_object_get(e, "dagster_event");
    const json_t *esd = json_object_get(de, "event_specific_data");
    memset(ev, 0, sizeof(*ev));
    *specific = NULL;
    ev->run_id = str_of(e, "run_id");
    ev->job_name = str_of(e, "pipeline_name");
    ev->user_message = str_of(e, "user_message");
    ev->level = (int)json_integer_value(json_object_get(e, "level"));
    ev->step_key = str_of(e, "step_key");
    ev->timestamp = json_real_value(json_object_get(e, "timestamp"));
    ev->pid = -1;
    if (!json_is_object(de))
        return 1;
    if (!dsw_streq(str_of(de, "step_key"), ev->step_key) ||
        (ev->step_key && json_object_size(json_object_get(de, "logging_tags")) == 0))
        return 0;
    if (!ev->step_key && json_object_size(json_object_get(de, "logging_tags")) != 0)
        return 0;
    ev->event_type = str_of(de, "event_type_value");
    ev->message = str_of(de, "message");
    if (json_is_integer(json_object_get(de, "pid")))
        ev->pid = (int)json_integer_value(json_object_get(de, "pid"));
    if (esd && !json_is_null(esd))
        ev->specific = *specific = json_dumps(esd, JSON_COMPACT);
    return 1;
}

struct entry_seen {
    size_t seen, skipped;
};

static void entry_event(const json_t *e, void *arg)
{
    struct entry_seen *n = arg;
    struct dsw_dagster_event ev;
    char *specific, *mine;
    if (!event_from_vector(e, &ev, &specific)) {
        n->skipped++;
        return;
    }
    mine = dsw_dagster_event_entry(&ev);
    assert_non_null(mine);
    assert_same_event(mine, e);
    free(mine);
    free(specific);
    n->seen++;
}

/* Every row of every scenario that the general writer can express comes out byte-equal. */
static void test_event_entry_all_vectors(void **state)
{
    static const char *const files[] = {"event_logs_success.json",
                                        "event_logs_failure.json",
                                        "event_logs_crash.json",
                                        "event_logs_crash_then_redelivered.json",
                                        "event_logs_starting.json",
                                        "event_logs_queued.json",
                                        "event_logs_concurrent_duplicate.json",
                                        "event_logs_success_then_second_call.json"};
    struct entry_seen n = {0, 0};
    each_event(files, DSW_ARRAY_LEN(files), entry_event, &n);
    print_message("event rows compared %zu, not expressible %zu\n", n.seen, n.skipped);
    assert_true(n.seen >= 140);
    assert_true(n.skipped < n.seen / 4);
}

/* The stdout lines of `dagster api execute_run` are DagsterEvents in the same form. */
static void test_event_line_vs_stdout(void **state)
{
    static const char *files[] = {"execute_run_stdout_success.jsonl",
                                  "execute_run_stdout_failure.jsonl"};
    size_t seen = 0;
    for (size_t f = 0; f < DSW_ARRAY_LEN(files); f++) {
        char *path = tu_vector_path(files[f]);
        char *text = tu_read_file(path, NULL), *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            json_t *de = json_loads(line, 0, NULL), *e = json_object();
            struct dsw_dagster_event ev;
            char *specific, *mine;
            assert_non_null(de);
            /* Wrapped as an entry so that event_from_vector reads it. */
            json_object_set(e, "dagster_event", de);
            json_object_set(e, "step_key", json_object_get(de, "step_key"));
            json_object_set(e, "pipeline_name", json_object_get(de, "pipeline_name"));
            json_object_set(e, "run_id",
                            json_object_get(json_object_get(de, "logging_tags"), "run_id"));
            json_object_set_new(e, "timestamp", json_real(1.0));
            if (event_from_vector(e, &ev, &specific)) {
                mine = dsw_dagster_event_line(&ev);
                assert_non_null(mine);
                assert_string_equal(mine, line); /* the file holds Python's own bytes */
                free(mine);
                seen++;
            }
            free(specific);
            json_decref(e);
            json_decref(de);
        }
        free(text);
        free(path);
    }
    assert_true(seen >= 25);
}

static void trim_zeros(char *s)
{
    size_t n = strlen(s);
    while (n && s[n - 1] == '0')
        s[--n] = '\0';
    if (n && s[n - 1] == '.')
        s[--n] = '\0';
}

/* event_logs.timestamp is utcfromtimestamp(event.timestamp); the vectors print it without
 * trailing zeros, as Postgres does. */
static void test_naive_utc_vs_vectors(void **state)
{
    json_t *rows = load_vec("event_logs_success_then_second_call.json"), *row;
    size_t i;
    char out[32];
    json_array_foreach(rows, i, row)
    {
        double ts = json_real_value(json_object_get(json_object_get(row, "event"), "timestamp"));
        assert_int_equal(dsw_dagster_naive_utc(ts, out), 0);
        trim_zeros(out);
        assert_string_equal(out, str_of(row, "timestamp"));
    }
    json_decref(rows);
    assert_int_equal(dsw_dagster_naive_utc(1717171800.0, out), 0);
    assert_string_equal(out, "2024-05-31T16:10:00.000000");
    assert_int_equal(dsw_dagster_naive_utc(0.9999996, out), 0);
    assert_string_equal(out, "1970-01-01T00:00:01.000000");
    assert_int_equal(dsw_dagster_naive_utc(1.0 / 0.0, out), -EINVAL);
}

/* The status member changes, nothing else does, byte for byte. */
static void test_body_set_status(void **state)
{
    json_t *rows = load_vec("runs_rows_all.json"), *row;
    size_t i;
    json_array_foreach(rows, i, row)
    {
        const char *body = str_of(row, "run_body"), *status = str_of(row, "status");
        char old[96], *out = NULL;
        snprintf(old, sizeof(old), "\"status\": {\"__enum__\": \"PipelineRunStatus.%s\"}", status);
        const char *at = strstr(body, old);
        assert_non_null(at);
        /* Same status: the stored bytes exactly. */
        assert_int_equal(dsw_dagster_body_set_status(body, status, &out), 0);
        assert_string_equal(out, body);
        free(out);
        /* New status: the stored bytes with that one member rewritten. */
        char *want = dsw_xasprintf("%.*s\"status\": {\"__enum__\": "
                                   "\"PipelineRunStatus.CANCELED\"}%s",
                                   (int)(at - body), body, at + strlen(old));
        assert_int_equal(dsw_dagster_body_set_status(body, "CANCELED", &out), 0);
        assert_string_equal(out, want);
        free(out);
        free(want);
        /* And a body re-serialized from the parsed vector is the stored one. */
        json_t *parsed = json_loads(body, 0, NULL);
        char *again = dagster_form(parsed, 0);
        assert_string_equal(again, body);
        free(again);
        json_decref(parsed);
    }
    json_decref(rows);
}

static void test_body_set_status_keeps_unknown(void **state)
{
    const char *body = "{\"__class__\": \"PipelineRun\", \"zz_new_member\": {\"b\": 1.5e-07, "
                       "\"a\": \"caf\\u00e9\"}, \"status\": {\"__enum__\": "
                       "\"PipelineRunStatus.STARTED\"}, \"aa_later\": [1, 2.0]}";
    const char *want = "{\"__class__\": \"PipelineRun\", \"zz_new_member\": {\"b\": 1.5e-07, "
                       "\"a\": \"caf\\u00e9\"}, \"status\": {\"__enum__\": "
                       "\"PipelineRunStatus.FAILURE\"}, \"aa_later\": [1, 2.0]}";
    char *out = NULL;
    assert_int_equal(dsw_dagster_body_set_status(body, "FAILURE", &out), 0);
    assert_string_equal(out, want);
    free(out);
    /* Not a run body (another class, not JSON, no status member), or not a status name. */
    const struct {
        const char *body, *status;
    } bad[] = {
        {"{\"__class__\": \"ExecuteRunArgs\", \"status\": null}", "FAILURE"},
        {"not json", "FAILURE"},
        {body, "FAILURE\", \"x"},
        {body, ""},
        {"{\"__class__\": \"PipelineRun\"}", "FAILURE"},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(bad); i++) {
        out = (char *)body;
        assert_int_equal(dsw_dagster_body_set_status(bad[i].body, bad[i].status, &out), -EINVAL);
        assert_null(out);
    }
}

static char *runs_row_body(void)
{
    json_t *row = load_vec("runs_row.json");
    char *body = dsw_xstrdup(str_of(row, "run_body"));
    json_decref(row);
    return body;
}

/* Origin and run args rebuild exactly what the real CLI got as argv[3]. */
static void test_origin_and_run_args_vs_argv(void **state)
{
    char *body = runs_row_body(), *origin = NULL, **ep = NULL, *exe = NULL, *args = NULL;
    json_t *argv = load_vec("execute_run_argv.json");
    const char *want = json_string_value(json_array_get(argv, 3));
    assert_string_equal(json_string_value(json_array_get(argv, 1)), "api");
    assert_string_equal(json_string_value(json_array_get(argv, 2)), "execute_run");

    assert_int_equal(dsw_dagster_body_origin(body, &origin, &ep, &exe), 0);
    assert_non_null(ep);
    assert_string_equal(ep[0], "dagster");
    assert_null(ep[1]);
    assert_string_equal(exe, "/usr/bin/python3");

    json_t *parsed = json_loads(want, 0, NULL);
    char *ref = dagster_form(json_object_get(parsed, "instance_ref"), 0);
    char *want_origin = dagster_form(json_object_get(parsed, "pipeline_origin"), 0);
    assert_string_equal(origin, want_origin);
    assert_int_equal(
        dsw_dagster_run_args("00000000-0000-4000-8000-000000000001", origin, ref, 0, &args), 0);
    assert_string_equal(args, want);
    free(args);

    /* strip: instance_ref null; resume: the other class, same members. */
    assert_int_equal(dsw_dagster_run_args("r1", origin, NULL, 1, &args), 0);
    char *expect = dsw_xasprintf("{\"__class__\": \"ResumeRunArgs\", \"instance_ref\": null, "
                                 "\"pipeline_origin\": %s, \"pipeline_run_id\": \"r1\", "
                                 "\"set_exit_code_on_failure\": true}",
                                 origin);
    assert_string_equal(args, expect);
    free(expect);
    free(args);
    assert_int_equal(dsw_dagster_run_args("r1", "[]", NULL, 0, &args), -EINVAL);
    assert_int_equal(dsw_dagster_run_args("r1", origin, "3", 0, &args), -EINVAL);

    free(ref);
    free(want_origin);
    json_decref(parsed);
    for (size_t i = 0; ep[i]; i++)
        free(ep[i]);
    free(ep);
    free(exe);
    free(origin);
    free(body);
    json_decref(argv);
}

/* dsw_dagster_step_args from a decoded real step message (tests/vectors/make_step_vectors.py)
 * and the stored run: byte for byte the execute_step_child_*.json files, which were checked
 * once by hand on each tree (make_step_vectors.py --check: deserialize_value(.., ExecuteStepArgs)
 * works, and serialize_value writes it back identically on its own tree). strip: instance_ref
 * null; the Celery vector (pack_value member order) forwards its instance_ref. */
static void check_step_child(const char *msg_file, const char *want_file, int forward)
{
    char *path = tu_vector_path(msg_file), *wpath = tu_vector_path(want_file);
    size_t len;
    char *msg = tu_read_file(path, &len), *want = tu_read_file(wpath, NULL);
    char *body = runs_row_body(), *origin = NULL, *args = NULL;
    struct dsw_msg_opts o = {.strict_run_id = 1};
    struct dsw_msg_request req;
    struct dsw_msg_reject rej;

    print_message("%s -> %s\n", msg_file, want_file);
    assert_int_equal(dsw_msg_decode(msg, len, &o, &req, &rej), 0);
    assert_int_equal(dsw_dagster_body_origin(body, &origin, NULL, NULL), 0);
    struct dsw_dagster_step st = {req.step_key, req.step_known_state, req.step_retry_mode,
                                  req.step_print_events};
    assert_int_equal(dsw_dagster_step_args("00000000-0000-4000-8000-000000000001", origin,
                                           forward ? req.instance_ref : NULL, &st, &args),
                     0);
    assert_string_equal(args, want);
    free(args);
    dsw_msg_request_clear(&req);
    free(origin);
    free(body);
    free(want);
    free(msg);
    free(wpath);
    free(path);
}

static void test_step_args(void **state)
{
    char *args = (char *)1;
    check_step_child("execute_step_args_mapped_1_3.json", "execute_step_child_1_3.json", 0);
    check_step_child("execute_step_args_mapped_1_7.json", "execute_step_child_1_7.json", 0);
    check_step_child("celery_execute_plan_1_3_b64.txt", "execute_step_child_celery_1_3.json", 1);
    check_step_child("celery_execute_plan_1_7_b64.txt", "execute_step_child_celery_1_7.json", 1);

    /* nulls, and the field left out or written */
    struct dsw_dagster_step st = {"s1", NULL, NULL, -1};
    const char *o = "{\"__class__\": \"PipelinePythonOrigin\"}";
    assert_int_equal(dsw_dagster_step_args("r1", o, NULL, &st, &args), 0);
    assert_string_equal(args, "{\"__class__\": \"ExecuteStepArgs\", \"instance_ref\": null, "
                              "\"known_state\": null, \"pipeline_origin\": {\"__class__\": "
                              "\"PipelinePythonOrigin\"}, \"pipeline_run_id\": \"r1\", "
                              "\"retry_mode\": null, \"should_verify_step\": true, "
                              "\"step_keys_to_execute\": [\"s1\"]}");
    free(args);
    st.print_events = 1;
    st.retry_mode = "{\"__enum__\":\"RetryMode.ENABLED\"}";
    assert_int_equal(dsw_dagster_step_args("r1", o, NULL, &st, &args), 0);
    assert_non_null(strstr(args, "\"print_serialized_events\": true, \"retry_mode\": "
                                 "{\"__enum__\": \"RetryMode.ENABLED\"}, "));
    free(args);
    /* bad arguments */
    st.retry_mode = "not json";
    assert_int_equal(dsw_dagster_step_args("r1", o, NULL, &st, &args), -EINVAL);
    assert_null(args);
    st.retry_mode = NULL;
    st.known_state = "[1]";
    assert_int_equal(dsw_dagster_step_args("r1", o, NULL, &st, &args), -EINVAL);
    st.known_state = NULL;
    st.step_key = "";
    assert_int_equal(dsw_dagster_step_args("r1", o, NULL, &st, &args), -EINVAL);
    st.step_key = "s1";
    assert_int_equal(dsw_dagster_step_args(NULL, o, NULL, &st, &args), -EINVAL);
    assert_int_equal(dsw_dagster_step_args("r1", "[]", NULL, &st, &args), -EINVAL);
    assert_int_equal(dsw_dagster_step_args("r1", o, "3", &st, &args), -EINVAL);
    assert_int_equal(dsw_dagster_step_args("r1", o, NULL, NULL, &args), -EINVAL);
}

static void test_origin_absent_members(void **state)
{
    const char *body = "{\"__class__\": \"PipelineRun\", \"pipeline_code_origin\": {\"__class__\": "
                       "\"PipelinePythonOrigin\", \"repository_origin\": {\"executable_path\": "
                       "null}}, \"status\": null, \"tags\": {}}";
    char *origin = NULL, **ep = (char **)1, *exe = (char *)1;
    assert_int_equal(dsw_dagster_body_origin(body, NULL, &ep, &exe), 0);
    assert_null(ep);
    assert_null(exe);
    assert_int_equal(
        dsw_dagster_body_origin("{\"__class__\": \"PipelineRun\"}", &origin, NULL, NULL), -EINVAL);
}

static void test_body_tag(void **state)
{
    const char *body = "{\"__class__\": \"PipelineRun\", \"status\": null, \"tags\": "
                       "{\"dsw/test_behavior\": \"sleep:3\", \"dagster/max_runtime\": \"60\"}}";
    char *v = NULL;
    assert_int_equal(dsw_dagster_body_tag(body, "dsw/test_behavior", &v), 0);
    assert_string_equal(v, "sleep:3");
    free(v);
    assert_int_equal(dsw_dagster_body_tag(body, "absent", &v), 0);
    assert_null(v);
    char *row = runs_row_body();
    assert_int_equal(dsw_dagster_body_tag(row, "dsw/test_behavior", &v), 0);
    assert_null(v);
    free(row);
    assert_int_equal(
        dsw_dagster_body_tag("{\"__class__\": \"PipelineRun\", \"tags\": []}", "a", &v), -EINVAL);
}

/* The vector's PIPELINE_FAILURE row, rewritten with RUN_WORKER_RESTART data. */
static void failure_event(const json_t *ev, void *arg)
{
    json_t *de = json_object_get(ev, "dagster_event");
    if (!dsw_streq(str_of(de, "event_type_value"), "PIPELINE_FAILURE"))
        return;
    char *mine = dsw_dagster_failure_event(str_of(ev, "run_id"), str_of(ev, "pipeline_name"),
                                           str_of(de, "message"), DSW_FAILURE_RUN_WORKER_RESTART,
                                           json_real_value(json_object_get(ev, "timestamp")));
    assert_non_null(mine);
    json_t *want = json_deep_copy(ev);
    json_object_set_new(json_object_get(want, "dagster_event"), "event_specific_data",
                        json_loads("{\"__class__\": \"PipelineFailureData\", \"error\": "
                                   "null, \"failure_reason\": {\"__enum__\": "
                                   "\"RunFailureReason.RUN_WORKER_RESTART\"}, "
                                   "\"first_step_failure_event\": null}",
                                   0, NULL));
    assert_same_event(mine, want);
    json_decref(want);
    free(mine);
    (*(size_t *)arg)++;
}

/* PipelineFailureData byte for byte as Dagster 1.7's serialize_value writes
 * JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION) (and
 * failure_reason=None); the PIPELINE_FAILURE entry is the 1.3 vector's row with that data. */
static void test_failure_data(void **state)
{
    char *d = dsw_dagster_failure_data(DSW_FAILURE_UNEXPECTED_TERMINATION);
    assert_string_equal(d, "{\"__class__\": \"PipelineFailureData\", \"error\": null, "
                           "\"failure_reason\": {\"__enum__\": "
                           "\"RunFailureReason.UNEXPECTED_TERMINATION\"}, "
                           "\"first_step_failure_event\": null}");
    free(d);
    d = dsw_dagster_failure_data(NULL);
    assert_string_equal(d, "{\"__class__\": \"PipelineFailureData\", \"error\": null, "
                           "\"failure_reason\": null, \"first_step_failure_event\": null}");
    free(d);
    assert_null(dsw_dagster_failure_data("lower"));
    assert_null(dsw_dagster_failure_data("A\", \"b"));
    assert_null(dsw_dagster_failure_data(""));

    static const char *const files[] = {"event_logs_crash_then_redelivered.json"};
    size_t seen = 0;
    each_event(files, 1, failure_event, &seen);
    assert_int_equal(seen, 1);
    assert_null(dsw_dagster_failure_event("r", "j", "m", "no", 1.0));
    assert_null(dsw_dagster_failure_event("r", "j", "m", NULL, 0.0 / 0.0));
}

/* No message ends in "..": the cause's own final period is not doubled. */
static void test_marked_message(void **state)
{
    static const struct {
        int canceled;
        const char *cause, *want;
    } cases[] = {
        {0, "run worker lost",
         "[dagster-sqs-worker] This run has been marked as failed: run "
         "worker lost."},
        {0,
         "Run worker lost: its dagster-sqs-worker stopped heartbeating (recorded by the "
         "sweeper).",
         "[dagster-sqs-worker] This run has been marked as failed: Run worker lost: its "
         "dagster-sqs-worker stopped heartbeating (recorded by the sweeper)."},
        {1, "Run canceled; its worker was lost. ",
         "[dagster-sqs-worker] This run has been marked as canceled: Run canceled; its worker "
         "was lost."},
        {0, "wait...", "[dagster-sqs-worker] This run has been marked as failed: wait."},
        {0, "why?", "[dagster-sqs-worker] This run has been marked as failed: why?"},
        {0, "stop!.", "[dagster-sqs-worker] This run has been marked as failed: stop!"},
        {0, "...", "[dagster-sqs-worker] This run has been marked as failed: ."},
    };
    for (size_t i = 0; i < DSW_ARRAY_LEN(cases); i++) {
        char *m = dsw_dagster_marked_message(cases[i].canceled, cases[i].cause);
        assert_string_equal(m, cases[i].want);
        assert_false(strlen(m) >= 2 && strcmp(m + strlen(m) - 2, "..") == 0);
        free(m);
    }
}

/* add_run_tags' body: tags merged (existing key in place, new key added, sorted as
 * serialize_value writes them), the status set, every other member kept. */
static void test_body_update_tags(void **state)
{
    const char *body = "{\"__class__\": \"PipelineRun\", \"status\": {\"__enum__\": "
                       "\"PipelineRunStatus.STARTING\"}, \"tags\": {\"a\": \"1\", \"m\": \"2\"}, "
                       "\"zz\": 1.5}";
    const struct dsw_kv tags[] = {{"m", "3"}, {"dagster-sqs-worker/worker_id", "h:1:2"}};
    char *out = NULL;
    assert_int_equal(dsw_dagster_body_update(body, NULL, tags, 2, &out), 0);
    assert_string_equal(out, "{\"__class__\": \"PipelineRun\", \"status\": {\"__enum__\": "
                             "\"PipelineRunStatus.STARTING\"}, \"tags\": {\"a\": \"1\", "
                             "\"dagster-sqs-worker/worker_id\": \"h:1:2\", \"m\": \"3\"}, "
                             "\"zz\": 1.5}");
    free(out);
    assert_int_equal(dsw_dagster_body_update(body, "FAILURE", tags, 1, &out), 0);
    assert_string_equal(out, "{\"__class__\": \"PipelineRun\", \"status\": {\"__enum__\": "
                             "\"PipelineRunStatus.FAILURE\"}, \"tags\": {\"a\": \"1\", "
                             "\"m\": \"3\"}, \"zz\": 1.5}");
    free(out);
    /* null tags become an object */
    assert_int_equal(dsw_dagster_body_update("{\"__class__\": \"PipelineRun\", \"tags\": null}",
                                             NULL, tags + 1, 1, &out),
                     0);
    assert_string_equal(out, "{\"__class__\": \"PipelineRun\", \"tags\": "
                             "{\"dagster-sqs-worker/worker_id\": \"h:1:2\"}}");
    free(out);
    /* every vector body: a tag lands in its sorted place, the rest is byte for byte */
    json_t *rows = load_vec("runs_rows_all.json"), *row;
    size_t i;
    json_array_foreach(rows, i, row)
    {
        const char *b = str_of(row, "run_body");
        assert_int_equal(dsw_dagster_body_update(b, NULL, tags + 1, 1, &out), 0);
        json_t *parsed = json_loads(b, 0, NULL);
        json_object_set_new(json_object_get(parsed, "tags"), "dagster-sqs-worker/worker_id",
                            json_string("h:1:2"));
        char *want = dagster_form(parsed, 1);
        assert_string_equal(out, want);
        free(want);
        free(out);
        json_decref(parsed);
    }
    json_decref(rows);
    const struct dsw_kv bad[] = {{"k", "\xff"}};
    assert_int_equal(dsw_dagster_body_update(body, NULL, bad, 1, &out), -EINVAL);
    assert_null(out);
    assert_int_equal(dsw_dagster_body_update("{\"__class__\": \"PipelineRun\", \"tags\": []}", NULL,
                                             tags, 1, &out),
                     -EINVAL);
    assert_int_equal(dsw_dagster_body_update("[]", NULL, tags, 1, &out), -EINVAL);
}

static void test_engine_data_and_errors(void **state)
{
    struct dsw_kv meta[] = {{"pid", "42"}, {"worker", "h\xc3\xa9:1"}};
    char *d = dsw_dagster_engine_data(meta, 2);
    assert_string_equal(d, "{\"__class__\": \"EngineEventData\", \"error\": null, \"marker_end\": "
                           "null, \"marker_start\": null, \"metadata_entries\": [{\"__class__\": "
                           "\"EventMetadataEntry\", \"description\": null, \"entry_data\": "
                           "{\"__class__\": \"TextMetadataEntryData\", \"text\": \"42\"}, "
                           "\"label\": \"pid\"}, {\"__class__\": \"EventMetadataEntry\", "
                           "\"description\": null, \"entry_data\": {\"__class__\": "
                           "\"TextMetadataEntryData\", \"text\": \"h\\u00e9:1\"}, \"label\": "
                           "\"worker\"}]}");
    free(d);
    struct dsw_kv bad[] = {{"pid", "\xff"}};
    assert_null(dsw_dagster_engine_data(bad, 1));
    assert_null(dsw_dagster_engine_event("r", "j", "m", bad, 1, -1, 1.0));
    assert_null(dsw_dagster_run_event("r", "j", "PIPELINE_FAILURE", "m", -1, 0.0 / 0.0));
    assert_null(dsw_dagster_run_event("r", "j", "PIPELINE_FAILURE", "\xc0\x80", -1, 1.0));
    char *canceled = dsw_dagster_run_event("r", "j", "PIPELINE_CANCELED", NULL, 7, 2.5);
    assert_non_null(strstr(canceled, "\"level\": 40"));
    assert_non_null(strstr(canceled, "\"message\": null, \"pid\": 7"));
    assert_non_null(strstr(canceled, "\"timestamp\": 2.5"));
    free(canceled);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_float_repr),
        cmocka_unit_test(test_string_escapes),
        cmocka_unit_test(test_writer_matches_python),
        cmocka_unit_test(test_outside_events_vs_crash_then_redelivered),
        cmocka_unit_test(test_run_events_all_vectors),
        cmocka_unit_test(test_event_entry_all_vectors),
        cmocka_unit_test(test_event_line_vs_stdout),
        cmocka_unit_test(test_naive_utc_vs_vectors),
        cmocka_unit_test(test_body_set_status),
        cmocka_unit_test(test_body_set_status_keeps_unknown),
        cmocka_unit_test(test_origin_and_run_args_vs_argv),
        cmocka_unit_test(test_step_args),
        cmocka_unit_test(test_origin_absent_members),
        cmocka_unit_test(test_body_tag),
        cmocka_unit_test(test_engine_data_and_errors),
        cmocka_unit_test(test_failure_data),
        cmocka_unit_test(test_marked_message),
        cmocka_unit_test(test_body_update_tags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
