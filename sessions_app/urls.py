from django.contrib.auth import views as auth_views
from django.urls import path

from . import views
from .forms import LoginForm

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/signup/", views.signup, name="signup"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True, authentication_form=LoginForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("new/", views.session_new, name="session-new"),
    path("sidebar/", views.sidebar_page, name="sidebar-page"),
    path("search/", views.search, name="search"),
    path("c/<str:session_id>/", views.chat, name="chat"),
    path("c/<str:session_id>/messages/", views.messages_earlier, name="messages-earlier"),
    path("c/<str:session_id>/send/", views.message_send, name="message-send"),
    path("c/<str:session_id>/reply/regenerate/", views.reply_regenerate, name="reply-regenerate"),
    path("c/<str:session_id>/reply/retry/", views.reply_retry, name="reply-retry"),
    path("c/<str:session_id>/reply/stop/", views.reply_stop, name="reply-stop"),
    path("c/<str:session_id>/m/<int:seq>/raw/", views.message_raw, name="message-raw"),
    path("c/<str:session_id>/m/<int:seq>/inspect/", views.reply_inspect, name="reply-inspect"),
    path("c/<str:session_id>/turns/", views.turns_earlier, name="turns-earlier"),
    path("c/<str:session_id>/context/", views.context_panel, name="context"),
    path("c/<str:session_id>/state/variables/", views.variable_set, name="variable-set"),
    path("c/<str:session_id>/state/variables/delete/", views.variable_delete, name="variable-delete"),
    path("c/<str:session_id>/state/data/", views.data_set, name="data-set"),
    path("c/<str:session_id>/state/data/delete/", views.data_delete, name="data-delete"),
    path("c/<str:session_id>/edit/", views.session_edit, name="session-edit"),
    path("c/<str:session_id>/clear/", views.session_clear, name="session-clear"),
    path("c/<str:session_id>/delete/", views.session_delete, name="session-delete"),
    path("c/<str:session_id>/fresh/", views.session_fresh, name="session-fresh"),
    path("c/<str:session_id>/continue/", views.session_continue, name="session-continue"),
    path("c/<str:session_id>/branch/", views.session_branch, name="session-branch"),
    path("c/<str:session_id>/messages/<int:seq>/edit/", views.message_edit, name="message-edit"),
    path("c/<str:session_id>/turns/<int:turn>/response/", views.response_choose, name="response-choose"),
    path("c/<str:session_id>/title/", views.session_title, name="session-title"),
    path("c/<str:session_id>/pin/", views.session_pin, name="session-pin"),
    path("c/<str:session_id>/archive/", views.session_archive, name="session-archive"),
    path("import/", views.import_page, name="import"),
    path("settings/api-keys/", views.api_keys, name="api_keys"),
    path("settings/api-keys/<int:key_id>/revoke/", views.api_key_revoke, name="api_key_revoke"),
]
