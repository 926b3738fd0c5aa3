"""Set-up shared by the Python drivers: bench/bench.py, tests/fault/driver.py and
tests/dagster/harness.py. A free loopback port, a private PostgreSQL cluster (initdb, start,
stop, psql), the daemon's db-init, a fauxqs server, and an SQS client in the AWS JSON 1.0
protocol that fauxqs and moto speak (signatures are not checked by either).

Standard library only: harness.py imports it from every Dagster interpreter it is run with.
Import it with the folder on sys.path:
    sys.path.insert(0, os.path.join(SRC, "tests", "support")); import dswtest
"""
import glob
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request

SUPPORT = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, timeout, what):
    """GET url until it answers (any 2xx), or RuntimeError after timeout seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("%s did not start within %.0f s" % (what, timeout))


# ---- PostgreSQL ------------------------------------------------------------------------------

def pg_bin():
    """$PGBIN, else the newest /usr/lib/postgresql/*/bin."""
    return os.environ.get("PGBIN") or sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p)])[-1]


class Cluster:
    """A private, restartable PostgreSQL cluster on a free loopback port with database dagster
    and the vectors' schema. As root the server runs as user postgres."""

    def __init__(self, vectors, prefix="dsw-pg.", max_connections=200):
        # Outside any output folder: postgres must traverse every parent directory of its data.
        self.dir = os.path.join(tempfile.mkdtemp(prefix=prefix), "pg")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.bin = pg_bin()
        self.vectors = vectors
        self.max_connections = max_connections
        self.root = os.getuid() == 0
        self.conninfo = "host=127.0.0.1 port=%d user=postgres dbname=dagster" % self.port

    def as_pg(self, args, **kw):
        if self.root:
            args = ["runuser", "-u", "postgres", "--"] + args
        return subprocess.run(args, **kw)

    def opts(self):
        return ("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off"
                " -c full_page_writes=off -c max_connections=%d"
                % (self.port, self.dir, self.max_connections))

    def init(self):
        os.makedirs(self.dir)
        os.chmod(os.path.dirname(self.dir), 0o755)
        if self.root:
            shutil.chown(self.dir, "postgres")
            os.chmod(self.dir, 0o700)
        self.as_pg([self.bin + "/initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                    "--no-sync", "-E", "UTF8"], check=True, stdout=subprocess.DEVNULL)
        self.start()
        subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-qAt", "-c", "CREATE DATABASE dagster"], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["psql", "-X", self.conninfo, "-q", "-v", "ON_ERROR_STOP=1", "-f",
                        os.path.join(self.vectors, "schema.sql")], check=True,
                       stdout=subprocess.DEVNULL)

    def start(self):
        self.as_pg([self.bin + "/pg_ctl", "-D", self.data, "-l",
                    os.path.join(self.dir, "server.log"), "-w", "-t", "60", "start", "-o",
                    self.opts()], check=True, stdout=subprocess.DEVNULL)

    def stop(self, mode="immediate"):
        self.as_pg([self.bin + "/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def remove(self):
        shutil.rmtree(os.path.dirname(self.dir), ignore_errors=True)

    def q(self, sql, tries=20, input=None):
        """Rows of sql as lists of strings (retried while the server is away); with input, a
        script run quietly."""
        err = ""
        for _ in range(tries):
            r = subprocess.run(["psql", "-X", self.conninfo, "-At", "-F", "\x1f", "-v",
                                "ON_ERROR_STOP=1", "-c", sql] if input is None else
                               ["psql", "-X", self.conninfo, "-At", "-q", "-v", "ON_ERROR_STOP=1"],
                               input=input, capture_output=True, text=True)
            if r.returncode == 0:
                return [ln.split("\x1f") for ln in r.stdout.splitlines() if ln != ""]
            err = r.stderr
            time.sleep(0.5)
        raise RuntimeError("psql failed: %s: %s" % (sql[:80] if sql else "script", err))


def conninfo_with_db(conninfo, db):
    """conninfo naming database db instead, and its key=value pairs."""
    kv = dict(p.split("=", 1) for p in conninfo.split())
    kv["dbname"] = db
    return " ".join("%s=%s" % i for i in kv.items()), kv


# ---- the daemon's own set-up ------------------------------------------------------------------

def worker_env(conninfo, queue_url, endpoint=None, dagster_home="/tmp", **extra):
    """Our environment plus what the daemon needs to reach conninfo and queue_url (test
    credentials; the HTTP listener off); extra DSW_* settings on top."""
    env = dict(os.environ, DSW_POSTGRES_CONNINFO=conninfo, DSW_QUEUE_URL=queue_url,
               DSW_QUEUE_REGION="us-east-1", DSW_RUNS_DAGSTER_HOME=dagster_home,
               DSW_HTTP_LISTEN="off")
    if endpoint:
        env.update(DSW_QUEUE_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="testing",
                   AWS_SECRET_ACCESS_KEY="testing")
    env.pop("DSW_FAILPOINTS", None)
    env.update(extra)
    return env


def db_init(daemon, env):
    """`daemon db-init` in env; RuntimeError with its stderr when it fails."""
    r = subprocess.run([daemon, "db-init"], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("db-init exited %d: %s" % (r.returncode, r.stderr.strip()[-500:]))


# ---- SQS --------------------------------------------------------------------------------------

class Sqs:
    """AWS JSON 1.0 client of one endpoint: a kept-alive connection per thread, each call tried
    `tries` times (a new connection each, `pause` seconds apart) before it raises."""

    def __init__(self, endpoint, tries=3, pause=0.0, timeout=30):
        u = urllib.parse.urlsplit(endpoint)
        self.endpoint = endpoint
        self.host, self.port = u.hostname, u.port
        self.tries, self.pause, self.timeout = tries, pause, timeout
        self.local = threading.local()

    def _drop(self):
        c = getattr(self.local, "conn", None)
        if c is not None:
            c.close()
        self.local.conn = None

    def call(self, action, payload, tries=None):
        body = json.dumps(payload)
        date = time.strftime("%Y%m%d", time.gmtime())
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "AmazonSQS." + action,
            "X-Amz-Date": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()),
            # moto routes by the credential scope's service; neither server checks it here
            "Authorization": "AWS4-HMAC-SHA256 Credential=x/%s/us-east-1/sqs/aws4_request, "
                             "SignedHeaders=host;x-amz-date, Signature=%s" % (date, "0" * 64),
        }
        tries = tries or self.tries
        attempt = 0
        while True:
            reused = getattr(self.local, "conn", None) is not None
            if not reused:
                self.local.conn = http.client.HTTPConnection(self.host, self.port,
                                                             timeout=self.timeout)
            try:
                self.local.conn.request("POST", "/", body, headers)
                r = self.local.conn.getresponse()
                data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self._drop()
                if r.status != 200:
                    raise RuntimeError("%s: HTTP %d %s" % (action, r.status, data[:300]))
                return json.loads(data) if data else {}
            except (http.client.HTTPException, OSError) as e:
                self._drop()
                # A kept-alive connection the server closed meanwhile (idle timeout, restart):
                # again on a new one, not counted as a try.
                if reused and isinstance(e, (http.client.RemoteDisconnected, ConnectionError)):
                    continue
                attempt += 1
                if attempt >= tries:
                    raise
                time.sleep(self.pause)

    def create_queue(self, name, attributes=None):
        p = {"QueueName": name}
        if attributes:
            p["Attributes"] = attributes
        return self.call("CreateQueue", p)["QueueUrl"]

    def send(self, url, body, tries=None):
        """The message's id."""
        return self.call("SendMessage", {"QueueUrl": url, "MessageBody": body},
                         tries=tries)["MessageId"]

    def send_batch(self, url, bodies):
        for i in range(0, len(bodies), 10):
            chunk = bodies[i:i + 10]
            r = self.call("SendMessageBatch", {"QueueUrl": url, "Entries": [
                {"Id": "m%d" % k, "MessageBody": b} for k, b in enumerate(chunk)]})
            if r.get("Failed"):
                raise RuntimeError("SendMessageBatch failed: %r" % r["Failed"][:2])

    def depth(self, url, tries=None):
        """(visible, in flight)."""
        a = self.call("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": [
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]},
            tries=tries)["Attributes"]
        return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])

    def receive(self, url, n=10, visibility=None, wait=0, tries=None):
        p = {"QueueUrl": url, "MaxNumberOfMessages": n, "WaitTimeSeconds": wait}
        if visibility is not None:
            p["VisibilityTimeout"] = visibility
        return self.call("ReceiveMessage", p, tries=tries).get("Messages") or []

    def drain(self, url, tries=None):
        """Every message left in the queue (received with a long visibility), as bodies."""
        bodies = []
        for _ in range(1000):
            msgs = self.receive(url, 10, visibility=600, tries=tries)
            if not msgs:
                break
            bodies += [m.get("Body", "") for m in msgs]
        return bodies


class Fauxqs:
    """A fauxqs server (tests/support/fauxqs) on a loopback port, restartable on the same port
    (it loses its state); log appended to log_path."""

    def __init__(self, log_path, port=None):
        self.port = port or free_port()
        self.endpoint = "http://127.0.0.1:%d" % self.port
        self.log_path = log_path
        self.proc = None

    def start(self, timeout=30):
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(["node", os.path.join(SUPPORT, "fauxqs", "serve.mjs"),
                                      str(self.port)], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        wait_http(self.endpoint + "/health", timeout, "fauxqs")

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
