#!/usr/bin/env bash
# CORS and Origin checks (SPEC §5, §6 --allowed-origins): linkd answers
# preflight OPTIONS itself, adds CORS headers to forwarded responses, honours
# per-route origins, and refuses WebSocket upgrades from other Origins.
. "$(dirname "$0")/lib.sh"

linkd_start --allowed-origins 'http://good.test,http://also.test' || exit 0
svc_start c --name cors --instance cors-1 --route 'GET /c' --route 'POST /c' --route 'GET /r cors=http://route.test' --ws /ws/c \
  || fail "service registers" "$(cat "$SVC_OUT")"

hdrs() { curl -s -m 5 -D - -o /dev/null "$@" | tr -d '\r'; }
acao() { grep -i '^access-control-allow-origin:' | sed 's/^[^:]*: *//'; }

H=$(hdrs -X OPTIONS "$LINKD_URL/c" -H 'Origin: http://good.test' -H 'Access-Control-Request-Method: POST' -H 'Access-Control-Request-Headers: content-type')
expect_match "preflight from an allowed origin: 2xx" "$(head -n1 <<<"$H")" '^HTTP/1.1 20[04]'
expect_eq "preflight: Access-Control-Allow-Origin echoes the origin" "$(acao <<<"$H")" 'http://good.test'
expect_match "preflight: allowed methods listed" "$H" '[Aa]ccess-[Cc]ontrol-[Aa]llow-[Mm]ethods: .*POST'
expect_match "preflight: requested header allowed" "$H" '[Aa]ccess-[Cc]ontrol-[Aa]llow-[Hh]eaders: .*[Cc]ontent-[Tt]ype'
check "preflight answered by linkd itself (the service never sees OPTIONS)" bash -c "! grep -q '\"method\": \"OPTIONS\"' '${SVC_OUTS[c]}'"

H=$(hdrs "$LINKD_URL/c" -H 'Origin: http://also.test')
expect_eq "forwarded response from an allowed origin carries CORS headers" "$(acao <<<"$H")" 'http://also.test'
expect_match "forwarded response varies on Origin (or allows *)" "$H" '([Vv]ary: .*Origin|[Aa]ccess-[Cc]ontrol-[Aa]llow-[Oo]rigin: \*)'
H=$(hdrs "$LINKD_URL/c" -H 'Origin: http://evil.test')
expect_eq "origin not allowed: no Access-Control-Allow-Origin" "$(acao <<<"$H")" ''
H=$(hdrs -X OPTIONS "$LINKD_URL/c" -H 'Origin: http://evil.test' -H 'Access-Control-Request-Method: POST')
expect_eq "preflight from a disallowed origin: no Access-Control-Allow-Origin" "$(acao <<<"$H")" ''
H=$(hdrs "$LINKD_URL/r" -H 'Origin: http://route.test')
expect_eq "per-route origin allowed on its route" "$(acao <<<"$H")" 'http://route.test'
H=$(hdrs "$LINKD_URL/c" -H 'Origin: http://route.test')
expect_eq "per-route origin not allowed on other routes" "$(acao <<<"$H")" ''
H=$(hdrs "$LINKD_URL/r" -H 'Origin: http://good.test')
expect_eq "global origins still allowed on a route with its own list" "$(acao <<<"$H")" 'http://good.test'
http GET /c
expect_eq "request without Origin still served" "$HTTP_STATUS" 200

S=$($PY "$TESTS/ws_client.py" handshake 127.0.0.1 "$LINKD_PORT" /ws/c 'Upgrade: websocket' 'Connection: Upgrade' \
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' 'Sec-WebSocket-Version: 13' 'Origin: http://good.test' | head -n1 | tr -d '\r')
expect_match "WebSocket upgrade from an allowed Origin: 101" "$S" '^HTTP/1.1 101'
S=$($PY "$TESTS/ws_client.py" handshake 127.0.0.1 "$LINKD_PORT" /ws/c 'Upgrade: websocket' 'Connection: Upgrade' \
  'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' 'Sec-WebSocket-Version: 13' 'Origin: http://evil.test' | head -n1 | tr -d '\r')
expect_match "WebSocket upgrade from another Origin: 403" "$S" '^HTTP/1.1 403'
check "linkd still running" linkd_alive
exit 0
