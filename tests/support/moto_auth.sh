#!/usr/bin/env bash
# A moto server that verifies SigV4, for the auth tests, on a free loopback port:
#   moto_auth.sh start DIR  -> starts moto with INITIAL_NO_AUTH_ACTION_COUNT=4, spends those four
#                              unverified calls on an IAM user with an allow-all policy and an
#                              access key, then gets temporary credentials for it through STS
#                              AssumeRole on a role with the same policy; writes DIR/env (KEY=value lines, not for sourcing
#                              into a shell that logs)
#   moto_auth.sh stop DIR
# moto checks access keys against its own IAM users and the temporary keys STS handed out.
set -euo pipefail

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

xml() { # tag < xml
    sed -n "s:.*<$1>\([^<]*\)</$1>.*:\1:p" | head -n1
}

call() { # service key secret body...
    local svc=$1 key=$2 secret=$3
    shift 3
    curl -sS --aws-sigv4 "aws:amz:us-east-1:$svc" --user "$key:$secret" \
        -H 'Content-Type: application/x-www-form-urlencoded' "$@" "$url/"
}

case "${1:-}" in
start)
    dir=${2:?usage: moto_auth.sh start DIR}
    mkdir -p "$dir"
    port=$(free_port)
    url=http://127.0.0.1:$port
    INITIAL_NO_AUTH_ACTION_COUNT=4 moto_server -H 127.0.0.1 -p "$port" >"$dir/moto-auth.log" 2>&1 &
    echo $! >"$dir/moto-auth.pid"
    deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null "$url/moto-api/" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "moto_auth: no answer on $url" >&2; exit 1; }
        sleep 0.1
    done
    v=Version=2010-05-08
    call iam x y -d "Action=CreateUser&UserName=dsw&$v" >/dev/null
    arn=$(call iam x y -d "Action=CreatePolicy&PolicyName=all&$v" \
        --data-urlencode 'PolicyDocument={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}' | xml Arn)
    call iam x y -d "Action=AttachUserPolicy&UserName=dsw&$v" --data-urlencode "PolicyArn=$arn" >/dev/null
    out=$(call iam x y -d "Action=CreateAccessKey&UserName=dsw&$v")
    key=$(echo "$out" | xml AccessKeyId)
    secret=$(echo "$out" | xml SecretAccessKey)
    # The role must exist (moto collects its policies on every call made with its keys).
    call iam "$key" "$secret" -d "Action=CreateRole&RoleName=dsw&$v" \
        --data-urlencode 'AssumeRolePolicyDocument={"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}' >/dev/null
    call iam "$key" "$secret" -d "Action=AttachRolePolicy&RoleName=dsw&$v" --data-urlencode "PolicyArn=$arn" >/dev/null
    out=$(call sts "$key" "$secret" -d "Action=AssumeRole&Version=2011-06-15&RoleSessionName=dsw-test" \
        --data-urlencode "RoleArn=arn:aws:iam::123456789012:role/dsw")
    tkey=$(echo "$out" | xml AccessKeyId)
    [ -n "$key" ] && [ -n "$tkey" ] || { echo "moto_auth: bootstrap failed" >&2; exit 1; }
    umask 077
    {
        echo "URL=$url"
        echo "KEY=$key"
        echo "SECRET=$secret"
        echo "TKEY=$tkey"
        echo "TSECRET=$(echo "$out" | xml SecretAccessKey)"
        echo "TOKEN=$(echo "$out" | xml SessionToken)"
    } >"$dir/env"
    ;;
stop)
    dir=${2:?usage: moto_auth.sh stop DIR}
    if [ -f "$dir/moto-auth.pid" ]; then
        kill "$(cat "$dir/moto-auth.pid")" 2>/dev/null || true
        rm -f "$dir/moto-auth.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2
    exit 64
    ;;
esac
