/*
 * mlserving_auth: a Mosquitto 2.0 plugin (plugin API v5) that makes the broker, not the
 * clients' good manners, keep tenants apart. Why it exists, and why not dynamic-security:
 * docs/security.md ("The broker plugin").
 *
 *  - CONNECT (MOSQ_EVT_BASIC_AUTH): a client id must belong to its username: `<username>:<...>`
 *    or a broker-assigned MQTT v5 id (`auto-` + UUID). Anything else is refused, so nobody can
 *    take over (kick, resume or wipe) another principal's session. An owned id defers to the
 *    password file, which still decides the password.
 *  - ACL (MOSQ_EVT_ACL_CHECK): the whole ACL, read from the Mosquitto acl-file format our
 *    renderers write (plugin_opt_acl_file; `user`, `topic read|write|readwrite|deny`).
 *    PUBLISH and delivery are decided exactly as Mosquitto's own acl_file does. A SUBSCRIBE
 *    (a leading `$share/<group>/` stripped) is granted only when every topic the filter can
 *    match is readable, so it is refused with SUBACK 0x87 instead of being granted and then
 *    silently filtered (which let a spy join another tenant's shared group and eat its turns).
 *  - Optional per-username publish rate (messages and bytes per second, token buckets shared
 *    by all of a user's connections): a publish over the budget is refused (PUBACK 0x87 at QoS 1).
 *  - A bound on a PUBLISH's MQTT v5 properties (Correlation Data, Response Topic, User
 *    Properties) for users without rate_exempt (MOSQ_EVT_MESSAGE): Mosquitto's max_queued_bytes
 *    counts payload bytes only, so without it a session's queue could hold max_queued_messages
 *    times max_packet_size of properties.
 *  - Every refusal is logged at NOTICE with the username, rate limited (log_per_second lines a
 *    second, then one "suppressed N" line) so a flood of refused publishes is not a log flood.
 *    A wrong password is decided by the password file after us; the plugin remembers each login
 *    it deferred and, when that connection ends without a client id (Mosquitto clears it on an
 *    authentication failure), logs it as refused with reason=bad_password.
 *  - Optional cap on simultaneous connections per username (not for rate_exempt users).
 *  - Optional admission by backlog (MOSQ_EVT_MESSAGE): a tenant's request is refused (PUBACK
 *    0x87) while tenant_backlog of its requests are unanswered, so a flood's backlog stays within
 *    the servers' session queues and what is over is refused, not dropped silently.
 *  - Nothing is queued for a tenant's (not rate_exempt) session while it is offline, so the
 *    number of a tenant's sessions that can hold messages is its number of connections.
 *
 * Options (mosquitto.conf `plugin_opt_<key> <value>`):
 *   acl_file <path>            required
 *   log_per_second <n>         refusal lines per second before suppressing (default 20)
 *   publish_rate <n>           messages per second per username, 0 = unlimited (default 0)
 *   publish_bytes_rate <n>     payload bytes per second per username, 0 = unlimited (default 0)
 *   max_properties_bytes <n>   property bytes per PUBLISH, 0 = unlimited (default 0)
 *   max_connections <n>        connections at once per username, 0 = unlimited (default 0)
 *   tenant_backlog <n>         requests a tenant may have unanswered (accepted, not yet answered
 *                              by a rate_exempt user on a topic it reads), 0 = unlimited (default 0)
 *   rate_exempt <u1,u2,...>    usernames without a publish budget or property bound (the
 *                              serving pods, which bound what they echo themselves; the trainer)
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define PLUGIN "mlserving-auth"
#define MAX_LEVELS 64

struct grant {
	char *filter;
	int access; /* MOSQ_ACL_READ | MOSQ_ACL_WRITE, or MOSQ_ACL_NONE for `deny` */
};

struct bucket {
	double tokens;
	double bytes;
	double stamp;
};

struct user {
	char *name;
	struct grant *grants;
	size_t count;
	bool rate_exempt;
	struct bucket bucket;
	long backlog;        /* requests accepted from this tenant and not yet answered */
	double last_answer;  /* when a service account last answered this tenant */
};

struct acl {
	struct user *users;
	size_t count;
};

static mosquitto_plugin_id_t *plugin_id;
static struct acl current;
static char *acl_path;
static char *rate_exempt_list;
static long log_per_second = 20;
static double publish_rate;
static double publish_bytes_rate;
static long max_properties_bytes;
static long max_connections;
static long tenant_backlog;
/* A backlog that saw no answer for this long is forgotten: requests that no server will answer
 * (none subscribed, a killed server's in-flight ones) must not lock a tenant out for good. */
#define BACKLOG_FORGET_SECONDS 30.0

/* Logins we deferred to the password file, by connection, until the connection ends. */
#define CONN_BUCKETS 4096
struct conn {
	const struct mosquitto *client;
	char *username;
	struct conn *next;
};
static struct conn *conns[CONN_BUCKETS];
static double log_window_start;
static long log_window_count;
static long log_suppressed;

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Copy `in` for a log line: at most 200 characters, quotes and control characters replaced. */
static void sanitize(const char *in, char *out, size_t size)
{
	size_t i = 0;
	if(!in) in = "(none)";
	for(; *in && i + 4 < size && i < 200; in++){
		unsigned char c = (unsigned char)*in;
		out[i++] = (c < 0x20 || c == '"' || c == '\\' || c == 0x7f) ? '?' : (char)c;
	}
	if(*in && i + 4 < size){
		out[i++] = '.'; out[i++] = '.'; out[i++] = '.';
	}
	out[i] = '\0';
}

static void flush_suppressed(double now)
{
	if(now - log_window_start >= 1.0){
		if(log_suppressed > 0){
			mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN ": suppressed %ld refusal line(s) in the last %.0f s",
					log_suppressed, now - log_window_start);
		}
		log_window_start = now;
		log_window_count = 0;
		log_suppressed = 0;
	}
}

/* One refusal line (NOTICE), at most log_per_second a second; `username` NULL: the client's. */
static void log_refusal_as(const char *username, const char *what, struct mosquitto *client, const char *key,
		const char *value, const char *reason)
{
	char user[256], id[256], val[256];
	double now = now_seconds();

	flush_suppressed(now);
	if(log_window_count >= log_per_second){
		log_suppressed++;
		return;
	}
	log_window_count++;
	sanitize(username ? username : mosquitto_client_username(client), user, sizeof(user));
	sanitize(mosquitto_client_id(client), id, sizeof(id));
	sanitize(value, val, sizeof(val));
	mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN ": refused %s user=\"%s\" client=\"%s\" %s=\"%s\" reason=%s",
			what, user, id, key, val, reason);
}

static void log_refusal(const char *what, struct mosquitto *client, const char *key, const char *value, const char *reason)
{
	log_refusal_as(NULL, what, client, key, value, reason);
}

/* ---- connections --------------------------------------------------------------------------- */

static size_t conn_bucket(const struct mosquitto *client)
{
	return (size_t)(((uintptr_t)client >> 4) % CONN_BUCKETS);
}

/* Remove and return the username remembered for `client` (caller frees), or NULL. */
static char *conn_take(const struct mosquitto *client)
{
	struct conn **link = &conns[conn_bucket(client)];
	for(; *link; link = &(*link)->next){
		if((*link)->client == client){
			struct conn *found = *link;
			char *username = found->username;
			*link = found->next;
			free(found);
			return username;
		}
	}
	return NULL;
}

static void conn_add(const struct mosquitto *client, const char *username)
{
	struct conn *entry = malloc(sizeof(*entry));
	free(conn_take(client)); /* a reused connection object: forget the stale entry */
	if(!entry) return;
	entry->username = strdup(username);
	if(!entry->username){
		free(entry);
		return;
	}
	entry->client = client;
	entry->next = conns[conn_bucket(client)];
	conns[conn_bucket(client)] = entry;
}

static bool conn_online(const struct mosquitto *client)
{
	for(const struct conn *c = conns[conn_bucket(client)]; c; c = c->next){
		if(c->client == client) return true;
	}
	return false;
}

static long conn_count(const char *username)
{
	long count = 0;
	for(size_t i = 0; i < CONN_BUCKETS; i++){
		for(const struct conn *c = conns[i]; c; c = c->next){
			if(!strcmp(c->username, username)) count++;
		}
	}
	return count;
}

static void conn_free_all(void)
{
	for(size_t i = 0; i < CONN_BUCKETS; i++){
		while(conns[i]){
			struct conn *next = conns[i]->next;
			free(conns[i]->username);
			free(conns[i]);
			conns[i] = next;
		}
	}
}

/* ---- ACL file ------------------------------------------------------------------------------ */

static void acl_free(struct acl *acl)
{
	for(size_t i = 0; i < acl->count; i++){
		for(size_t j = 0; j < acl->users[i].count; j++) free(acl->users[i].grants[j].filter);
		free(acl->users[i].grants);
		free(acl->users[i].name);
	}
	free(acl->users);
	acl->users = NULL;
	acl->count = 0;
}

static bool in_list(const char *list, const char *name)
{
	size_t len = strlen(name);
	const char *p = list;
	while(p && *p){
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		if(n == len && !strncmp(p, name, len)) return true;
		p = end ? end + 1 : NULL;
	}
	return false;
}

static char *trim(char *s)
{
	char *end;
	while(isspace((unsigned char)*s)) s++;
	end = s + strlen(s);
	while(end > s && isspace((unsigned char)end[-1])) *--end = '\0';
	return s;
}

/* Parse the subset of Mosquitto's acl-file format our renderers write; anything else is an
 * error (the broker then refuses to start), never a silently ignored line. */
static int acl_parse(const char *path, struct acl *out)
{
	FILE *f = fopen(path, "r");
	char line[4096];
	int lineno = 0;
	struct user *user = NULL;

	memset(out, 0, sizeof(*out));
	if(!f){
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN ": cannot open acl_file %s", path);
		return MOSQ_ERR_INVAL;
	}
	while(fgets(line, sizeof(line), f)){
		char *s = trim(line);
		lineno++;
		if(*s == '\0' || *s == '#') continue;
		if(!strncmp(s, "user ", 5)){
			struct user *users;
			const char *name = trim(s + 5);
			user = NULL;
			for(size_t i = 0; i < out->count; i++){ /* a repeated block adds to the user, as in Mosquitto */
				if(!strcmp(out->users[i].name, name)) user = &out->users[i];
			}
			if(user) continue;
			users = realloc(out->users, (out->count + 1) * sizeof(*users));
			if(!users) goto nomem;
			out->users = users;
			user = &out->users[out->count++];
			memset(user, 0, sizeof(*user));
			user->name = strdup(name);
			if(!user->name) goto nomem;
			user->rate_exempt = rate_exempt_list && in_list(rate_exempt_list, user->name);
			user->bucket.tokens = publish_rate;
			user->bucket.bytes = publish_bytes_rate;
			user->bucket.stamp = now_seconds();
		}else if(!strncmp(s, "topic ", 6)){
			char *rest = trim(s + 6), *filter = rest;
			int access = MOSQ_ACL_READ | MOSQ_ACL_WRITE;
			struct grant *grants;
			if(!strncmp(rest, "readwrite ", 10)){ filter = rest + 10; }
			else if(!strncmp(rest, "read ", 5)){ access = MOSQ_ACL_READ; filter = rest + 5; }
			else if(!strncmp(rest, "write ", 6)){ access = MOSQ_ACL_WRITE; filter = rest + 6; }
			else if(!strncmp(rest, "deny ", 5)){ access = MOSQ_ACL_NONE; filter = rest + 5; }
			filter = trim(filter);
			if(!user || *filter == '\0' || mosquitto_sub_topic_check(filter) != MOSQ_ERR_SUCCESS){
				mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN ": %s:%d: bad or misplaced topic line", path, lineno);
				goto invalid;
			}
			grants = realloc(user->grants, (user->count + 1) * sizeof(*grants));
			if(!grants) goto nomem;
			user->grants = grants;
			user->grants[user->count].filter = strdup(filter);
			if(!user->grants[user->count].filter) goto nomem;
			user->grants[user->count++].access = access;
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN ": %s:%d: unsupported line (only user/topic)", path, lineno);
			goto invalid;
		}
	}
	fclose(f);
	return MOSQ_ERR_SUCCESS;
nomem:
	fclose(f);
	acl_free(out);
	return MOSQ_ERR_NOMEM;
invalid:
	fclose(f);
	acl_free(out);
	return MOSQ_ERR_INVAL;
}

static struct user *find_user(const char *name)
{
	if(!name) return NULL;
	for(size_t i = 0; i < current.count; i++){
		if(!strcmp(current.users[i].name, name)) return &current.users[i];
	}
	return NULL;
}

/* ---- topic filters ------------------------------------------------------------------------- */

static int split(char *s, char **levels)
{
	int n = 0;
	levels[n++] = s;
	for(; *s; s++){
		if(*s == '/'){
			if(n == MAX_LEVELS) return -1;
			*s = '\0';
			levels[n++] = s + 1;
		}
	}
	return n;
}

/* True when every topic that `filter` can match is matched by `grant` as well. */
static bool covers(const char *grant, const char *filter)
{
	char gbuf[65536], fbuf[65536];
	char *g[MAX_LEVELS], *f[MAX_LEVELS];
	int gn, fn, i;

	if(strlen(grant) >= sizeof(gbuf) || strlen(filter) >= sizeof(fbuf)) return false;
	/* Wildcards never match topics starting with '$' (MQTT 4.7.2), so only a '$' grant covers them. */
	if((filter[0] == '$') != (grant[0] == '$')) return false;
	strcpy(gbuf, grant);
	strcpy(fbuf, filter);
	gn = split(gbuf, g);
	fn = split(fbuf, f);
	if(gn < 0 || fn < 0) return false;
	for(i = 0; i < gn; i++){
		if(!strcmp(g[i], "#")) return true; /* matches the rest, and the parent level */
		if(i >= fn) return false;
		if(!strcmp(f[i], "#")) return false;
		if(!strcmp(g[i], "+")) continue;
		if(!strcmp(f[i], "+") || strcmp(f[i], g[i])) return false;
	}
	return fn == gn;
}

/* True when some topic matches both filters (used for `deny` lines against a SUBSCRIBE). */
static bool overlaps(const char *a, const char *b)
{
	char abuf[65536], bbuf[65536];
	char *x[MAX_LEVELS], *y[MAX_LEVELS];
	int xn, yn, i;

	if(strlen(a) >= sizeof(abuf) || strlen(b) >= sizeof(bbuf)) return true;
	strcpy(abuf, a);
	strcpy(bbuf, b);
	xn = split(abuf, x);
	yn = split(bbuf, y);
	if(xn < 0 || yn < 0) return true;
	for(i = 0; i < xn && i < yn; i++){
		if(!strcmp(x[i], "#") || !strcmp(y[i], "#")) return true;
		if(!strcmp(x[i], "+") || !strcmp(y[i], "+")) continue;
		if(strcmp(x[i], y[i])) return false;
	}
	if(xn == yn) return true;
	/* `a/#` also matches `a`. */
	return (xn == yn + 1 && !strcmp(x[yn], "#")) || (yn == xn + 1 && !strcmp(y[xn], "#"));
}

/* Mosquitto's acl_file semantics for PUBLISH (write) and delivery (read): a matching `deny`
 * refuses, otherwise any matching grant with the access bit allows; '$' topics only match
 * '$' grants. */
static bool topic_allowed(const struct user *user, const char *topic, int access)
{
	bool match;
	for(size_t i = 0; i < user->count; i++){
		const struct grant *g = &user->grants[i];
		if(g->access != MOSQ_ACL_NONE) continue;
		if(topic[0] == '$' && g->filter[0] != '$') continue;
		if(mosquitto_topic_matches_sub(g->filter, topic, &match) == MOSQ_ERR_SUCCESS && match) return false;
	}
	for(size_t i = 0; i < user->count; i++){
		const struct grant *g = &user->grants[i];
		if(!(g->access & access)) continue;
		if(topic[0] == '$' && g->filter[0] != '$') continue;
		if(mosquitto_topic_matches_sub(g->filter, topic, &match) == MOSQ_ERR_SUCCESS && match) return true;
	}
	return false;
}

static bool subscribe_allowed_filter(const struct user *user, const char *filter)
{
	for(size_t i = 0; i < user->count; i++){
		const struct grant *g = &user->grants[i];
		if(g->access == MOSQ_ACL_NONE && overlaps(g->filter, filter)) return false;
	}
	for(size_t i = 0; i < user->count; i++){
		const struct grant *g = &user->grants[i];
		if((g->access & MOSQ_ACL_READ) && covers(g->filter, filter)) return true;
	}
	return false;
}

static bool subscribe_allowed(const struct user *user, const char *filter)
{
	if(subscribe_allowed_filter(user, filter)) return true; /* e.g. a literal `$share/...` grant */
	if(!strncmp(filter, "$share/", 7)){
		const char *rest = strchr(filter + 7, '/');
		if(rest && rest[1] != '\0') return subscribe_allowed_filter(user, rest + 1);
	}
	return false;
}

/* Token buckets per username (all of its connections share one budget). */
static bool within_budget(struct user *user, uint32_t payloadlen)
{
	double now, elapsed;
	if(user->rate_exempt || (publish_rate <= 0 && publish_bytes_rate <= 0)) return true;
	now = now_seconds();
	elapsed = now - user->bucket.stamp;
	user->bucket.stamp = now;
	if(publish_rate > 0){
		user->bucket.tokens += elapsed * publish_rate;
		if(user->bucket.tokens > publish_rate) user->bucket.tokens = publish_rate; /* 1 s burst */
		if(user->bucket.tokens < 1.0) return false;
	}
	if(publish_bytes_rate > 0){
		user->bucket.bytes += elapsed * publish_bytes_rate;
		if(user->bucket.bytes > publish_bytes_rate) user->bucket.bytes = publish_bytes_rate;
		if(user->bucket.bytes < (double)payloadlen) return false;
	}
	if(publish_rate > 0) user->bucket.tokens -= 1.0;
	if(publish_bytes_rate > 0) user->bucket.bytes -= (double)payloadlen;
	return true;
}

/* ---- callbacks ----------------------------------------------------------------------------- */

static bool is_assigned_id(const char *id)
{
	/* client_id_gen in Mosquitto 2.0: "auto-" + 8-4-4-4-12 hex digits from 16 random bytes. */
	if(strncmp(id, "auto-", 5) || strlen(id) != 5 + 36) return false;
	for(int i = 0; i < 36; i++){
		char c = id[5 + i];
		bool dash = (i == 8 || i == 13 || i == 18 || i == 23);
		if(dash ? c != '-' : !isxdigit((unsigned char)c)) return false;
	}
	return true;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	size_t ulen;
	(void)event; (void)userdata;

	if(!ed->username) return MOSQ_ERR_PLUGIN_DEFER; /* allow_anonymous false refuses */
	if(strchr(ed->username, ':')){
		log_refusal("connect", ed->client, "address", mosquitto_client_address(ed->client), "colon_in_username");
		return MOSQ_ERR_AUTH;
	}
	ulen = strlen(ed->username);
	if(!(id && !strncmp(id, ed->username, ulen) && id[ulen] == ':' && id[ulen + 1] != '\0')
			&& !(id && is_assigned_id(id))){
		log_refusal("connect", ed->client, "address", mosquitto_client_address(ed->client), "client_id_not_owned");
		return MOSQ_ERR_AUTH;
	}
	if(max_connections > 0){
		struct user *user = find_user(ed->username);
		if(!(user && user->rate_exempt) && conn_count(ed->username) >= max_connections){
			log_refusal("connect", ed->client, "address", mosquitto_client_address(ed->client), "too_many_connections");
			return MOSQ_ERR_AUTH;
		}
	}
	conn_add(ed->client, ed->username);
	return MOSQ_ERR_PLUGIN_DEFER; /* the password file decides */
}

/* A deferred login whose connection ends without a client id was refused by the password file. */
static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	char *username = conn_take(ed->client);
	(void)event; (void)userdata;

	if(username && !mosquitto_client_id(ed->client)){
		log_refusal_as(username, "connect", ed->client, "address", mosquitto_client_address(ed->client), "bad_password");
	}
	free(username);
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct user *user;
	(void)event; (void)userdata;

	if(ed->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
	user = find_user(mosquitto_client_username(ed->client));
	switch(ed->access){
	case MOSQ_ACL_SUBSCRIBE:
		if(user && subscribe_allowed(user, ed->topic)) return MOSQ_ERR_SUCCESS;
		log_refusal("subscribe", ed->client, "filter", ed->topic, "not_granted");
		return MOSQ_ERR_ACL_DENIED;
	case MOSQ_ACL_WRITE:
		if(!user || !topic_allowed(user, ed->topic, MOSQ_ACL_WRITE)){
			log_refusal("publish", ed->client, "topic", ed->topic, "not_granted");
			return MOSQ_ERR_ACL_DENIED;
		}
		if(!within_budget(user, ed->payloadlen)){
			log_refusal("publish", ed->client, "topic", ed->topic, "rate_limited");
			return MOSQ_ERR_ACL_DENIED;
		}
		return MOSQ_ERR_SUCCESS;
	case MOSQ_ACL_READ:
		if(!user || !topic_allowed(user, ed->topic, MOSQ_ACL_READ)){
			log_refusal("read", ed->client, "topic", ed->topic, "not_granted");
			return MOSQ_ERR_ACL_DENIED;
		}
		/* Mosquitto checks READ when it queues a message for a session, online or not. A
		 * tenant's offline persistent sessions get nothing: otherwise one tenant could park any
		 * number of them (connect with a session expiry, subscribe, leave) and fill each queue
		 * with answers to its own requests, and the connection cap could not count them. The
		 * trainer's (rate_exempt) session is the one that must queue while it is away. */
		if(!user->rate_exempt && !conn_online(ed->client)){
			log_refusal("read", ed->client, "topic", ed->topic, "offline_session");
			return MOSQ_ERR_ACL_DENIED;
		}
		return MOSQ_ERR_SUCCESS;
	default:
		return MOSQ_ERR_ACL_DENIED;
	}
}

/* Bytes the properties of a PUBLISH take (value lengths; identifiers and length fields add a few
 * bytes each, counted as 3). Only through libmosquitto's public property API. */
static long properties_size(const mosquitto_property *props)
{
	long total = 0;
	for(const mosquitto_property *p = props; p; p = mosquitto_property_next(p)){
		int id = mosquitto_property_identifier(p);
		uint16_t len = 0;
		char *name = NULL, *value = NULL;
		void *bin = NULL;
		total += 3;
		switch(id){
		case MQTT_PROP_CORRELATION_DATA:
			if(mosquitto_property_read_binary(p, id, &bin, &len, false)) total += len;
			break;
		case MQTT_PROP_RESPONSE_TOPIC:
		case MQTT_PROP_CONTENT_TYPE:
			if(mosquitto_property_read_string(p, id, &value, false) && value) total += (long)strlen(value);
			break;
		case MQTT_PROP_USER_PROPERTY:
			if(mosquitto_property_read_string_pair(p, id, &name, &value, false)){
				total += (name ? (long)strlen(name) : 0) + (value ? (long)strlen(value) : 0);
			}
			break;
		default:
			total += 4;
		}
		/* libmosquitto's property readers copy with plain calloc (lib/property_mosq.c, 2.0.11) */
		free(name);
		free(value);
		free(bin);
	}
	return total;
}

/* A service account's PUBLISH to a topic a tenant may read is an answer to that tenant. */
static void count_answer(const char *topic)
{
	for(size_t i = 0; i < current.count; i++){
		struct user *tenant = &current.users[i];
		if(tenant->rate_exempt || !topic_allowed(tenant, topic, MOSQ_ACL_READ)) continue;
		if(tenant->backlog > 0) tenant->backlog--;
		tenant->last_answer = now_seconds();
		return;
	}
}

/* Admission by backlog: every request a tenant publishes is answered by exactly one PUBLISH of a
 * server to the tenant's response topics (docs/protocol.md), so requests accepted minus answers
 * seen is what waits for the tenant in the broker's queues and the servers. Over tenant_backlog
 * the request is refused (PUBACK 0x87): the client knows at once, instead of Mosquitto dropping
 * it silently once a server's session queue (max_queued_messages) is full. */
static bool admit_request(struct user *tenant)
{
	double now;
	if(tenant_backlog <= 0) return true;
	if(tenant->backlog >= tenant_backlog){
		now = now_seconds();
		if(now - tenant->last_answer < BACKLOG_FORGET_SECONDS) return false;
		mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN ": backlog of user=%s forgotten (%ld requests, no answer for %.0f s)",
				tenant->name, tenant->backlog, BACKLOG_FORGET_SECONDS);
		tenant->backlog = 0;
	}
	if(tenant->backlog == 0) tenant->last_answer = now_seconds(); /* the clock starts with the backlog */
	tenant->backlog++;
	return true;
}

static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	struct user *user;
	(void)event; (void)userdata;

	user = find_user(mosquitto_client_username(ed->client));
	if(!user) return MOSQ_ERR_SUCCESS; /* the ACL check refused it already */
	if(user->rate_exempt){
		if(tenant_backlog > 0) count_answer(ed->topic);
		return MOSQ_ERR_SUCCESS;
	}
	if(max_properties_bytes > 0 && ed->properties && properties_size(ed->properties) > max_properties_bytes){
		log_refusal("publish", ed->client, "topic", ed->topic, "properties_too_large");
		return MOSQ_ERR_ACL_DENIED; /* PUBACK 0x87 at QoS 1 */
	}
	if(!admit_request(user)){
		log_refusal("publish", ed->client, "topic", ed->topic, "backlog_full");
		return MOSQ_ERR_ACL_DENIED;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	struct acl fresh;
	(void)event; (void)event_data; (void)userdata;
	if(acl_parse(acl_path, &fresh) != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, PLUGIN ": reload failed, keeping the previous ACL");
		return MOSQ_ERR_SUCCESS;
	}
	acl_free(&current);
	current = fresh;
	return MOSQ_ERR_SUCCESS;
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event; (void)event_data; (void)userdata;
	flush_suppressed(now_seconds());
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	int rc;
	(void)userdata;
	plugin_id = identifier;
	for(int i = 0; i < option_count; i++){
		const char *key = options[i].key, *value = options[i].value;
		if(!strcmp(key, "acl_file")) acl_path = strdup(value);
		else if(!strcmp(key, "log_per_second")) log_per_second = atol(value);
		else if(!strcmp(key, "publish_rate")) publish_rate = atof(value);
		else if(!strcmp(key, "publish_bytes_rate")) publish_bytes_rate = atof(value);
		else if(!strcmp(key, "rate_exempt")) rate_exempt_list = strdup(value);
		else if(!strcmp(key, "max_properties_bytes")) max_properties_bytes = atol(value);
		else if(!strcmp(key, "max_connections")) max_connections = atol(value);
		else if(!strcmp(key, "tenant_backlog")) tenant_backlog = atol(value);
		else{
			mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN ": unknown option plugin_opt_%s", key);
			return MOSQ_ERR_INVAL;
		}
	}
	if(!acl_path){
		mosquitto_log_printf(MOSQ_LOG_ERR, PLUGIN ": plugin_opt_acl_file is required");
		return MOSQ_ERR_INVAL;
	}
	rc = acl_parse(acl_path, &current);
	if(rc) return rc;
	log_window_start = now_seconds();
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL, NULL))) return rc;
	if((rc = mosquitto_callback_register(plugin_id, MOSQ_EVT_TICK, on_tick, NULL, NULL))) return rc;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, PLUGIN ": %zu user(s) from %s; publish_rate %.0f/s, %.0f B/s per user;"
			" max_properties_bytes %ld; max_connections %ld; tenant_backlog %ld", current.count, acl_path, publish_rate,
			publish_bytes_rate, max_properties_bytes, max_connections, tenant_backlog);
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata; (void)options; (void)option_count;
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_MESSAGE, on_message, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_RELOAD, on_reload, NULL);
	mosquitto_callback_unregister(plugin_id, MOSQ_EVT_TICK, on_tick, NULL);
	acl_free(&current);
	conn_free_all();
	free(acl_path);
	free(rate_exempt_list);
	acl_path = rate_exempt_list = NULL;
	return MOSQ_ERR_SUCCESS;
}
