from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0005_conversation_collections"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="support",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="conversation",
            name="provider",
            field=models.CharField(blank=True, max_length=40),
        ),
    ]
