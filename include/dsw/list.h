/* list: one intrusive doubly-linked list for every module (the libuv QUEUE / Linux list_head
 * idiom). A struct dsw_list is embedded in each element and the head is a struct dsw_list of
 * its own; the list is circular, so insertion and removal never test for the ends. */
#ifndef DSW_LIST_H
#define DSW_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct dsw_list {
    struct dsw_list *prev, *next;
};

/* An empty list (or an element that is in no list). */
static inline void dsw_list_init(struct dsw_list *h)
{
    h->prev = h->next = h;
}

static inline bool dsw_list_empty(const struct dsw_list *h)
{
    return h->next == h;
}

/* Insert n at the head of h (n must be in no list). */
static inline void dsw_list_push_front(struct dsw_list *h, struct dsw_list *n)
{
    n->next = h->next;
    n->prev = h;
    h->next->prev = n;
    h->next = n;
}

/* Insert n at the tail of h (n must be in no list). */
static inline void dsw_list_push_back(struct dsw_list *h, struct dsw_list *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

/* Unlink n from its list (once). n's own pointers are left as they were, as libuv's QUEUE does:
 * an iteration that saved n as its next node can still step on from it, provided the element
 * is not freed meanwhile. */
static inline void dsw_list_remove(struct dsw_list *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
}

/* The element that embeds node as member. */
#define dsw_list_entry(node, type, member) ((type *)(void *)((char *)(node)-offsetof(type, member)))

/* Iterate over the nodes of h; the _safe form allows removing pos inside the body. */
#define dsw_list_foreach(pos, h) for ((pos) = (h)->next; (pos) != (h); (pos) = (pos)->next)
#define dsw_list_foreach_safe(pos, tmp, h)                                                         \
    for ((pos) = (h)->next, (tmp) = (pos)->next; (pos) != (h); (pos) = (tmp), (tmp) = (pos)->next)

#endif
